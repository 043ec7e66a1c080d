// The attention explorer's page: plain JavaScript, no libraries. It asks explore.py's server
// to decode an input (api/explain), or reads the examples that `explore.py --export` embedded
// in the page, and draws the attention of every layer and head three ways: a head view
// (lines between tokens), a model view (all maps at once) and a query/key view (equation 1
// for one query, computed here from the model's q and k vectors).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const HEAD_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
  "#7b4173", "#3182bd"];
const $ = (id) => document.getElementById(id);

const state = {
  info: null, result: null, groups: null, module: null, layer: 0, heads: new Set(),
  view: "head", merge: false, qkHead: 0, qkQuery: 0, opened: null, examples: null,
};

// ------------------------------------------------------------------------------ data
function decodeArray({ shape, data }) {
  // Little-endian float32, as the server wrote it and as every browser's host stores it.
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return { shape, values: new Float32Array(bytes.buffer) };
}

// Rows [len][d] of head h of an array [heads, len, d] (weights: [heads, queries, keys]).
function headRows(array, h) {
  const [, n, d] = array.shape;
  const rows = [];
  for (let i = 0; i < n; i++) rows.push(array.values.subarray((h * n + i) * d, (h * n + i + 1) * d));
  return rows;
}

// The result's modules decoded and grouped by kind ("encoder/self_attention", ...), each
// group's modules in layer order.
function prepare(result) {
  if (result.groups) return result.groups;  // An exported example shown before.
  const groups = new Map();
  for (const m of result.modules) {
    for (const key of ["attention_weights", "queries", "keys", "values"]) m[key] = decodeArray(m[key]);
    const [stack, , kind] = m.name.split("/");
    const group = `${stack}/${kind}`;
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group)[m.layer] = m;
  }
  result.groups = groups;
  return groups;
}

// ---------------------------------------------------------------- pieces and words
// A word is a piece that starts one (the server marks them) and the pieces after it.
function wordGroups(starts) {
  const groups = [];
  starts.forEach((start, i) => (start || !groups.length ? groups.push([i]) : groups.at(-1).push(i)));
  return groups;
}

// The labels and token groups of one axis: pieces as the tokenizer made them, or words.
function axis(sequence) {
  const pieces = state.result.tokens[sequence];
  if (!state.merge) return { labels: pieces, groups: pieces.map((_, i) => [i]) };
  const groups = wordGroups(state.result.word_starts[sequence]);
  const labels = groups.map((g) => g.map((i) => pieces[i]).join("").replaceAll("\u2581", "") || pieces[g[0]]);
  return { labels, groups };
}

// Head h's weights [queries][keys], merged into words where asked: attention to a word is
// the sum over its pieces, attention from a word the mean over its pieces (rows still sum
// to 1), as Clark et al. (2019) merge BERT's word pieces.
function weights(module, h, queries, keys) {
  const rows = headRows(module.attention_weights, h);
  return queries.groups.map((qg) => keys.groups.map((kg) => {
    let sum = 0;
    for (const q of qg) for (const k of kg) sum += rows[q][k];
    return sum / qg.length;
  }));
}

// ------------------------------------------------------------------------ drawing
function svgElement(name, attributes, parent) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (parent) parent.appendChild(element);
  return element;
}

function clear(element) {
  while (element.firstChild) element.removeChild(element.firstChild);
  return element;
}

function heatColour(w) {
  // White to dark blue as the weight goes from 0 to 1.
  const t = Math.max(0, Math.min(1, w));
  return `rgb(${Math.round(255 - 212 * t)},${Math.round(255 - 147 * t)},${Math.round(255 - 79 * t)})`;
}

function currentModule() {
  return state.groups.get(state.module)[state.layer];
}

function axesOf(module) {
  return { queries: axis(module.query_tokens), keys: axis(module.key_tokens) };
}

function renderHeadView() {
  const module = currentModule();
  const { queries, keys } = axesOf(module);
  const svg = clear($("head-svg"));
  const row = 20, left = 170, right = 400, rows = Math.max(queries.labels.length, keys.labels.length);
  svg.setAttribute("width", right + 180);
  svg.setAttribute("height", rows * row + 10);
  const lines = svgElement("g", { id: "head-lines" }, svg);
  for (const h of [...state.heads].sort((a, b) => a - b)) {
    const matrix = weights(module, h, queries, keys);
    matrix.forEach((wRow, q) => wRow.forEach((w, k) => {
      if (w <= 0) return; // A masked key (the future, in decoder self-attention) gets no line.
      svgElement("line", {
        x1: left, y1: q * row + 15, x2: right, y2: k * row + 15, stroke: HEAD_COLOURS[h % 16],
        "stroke-opacity": w, "stroke-width": 2, "data-head": h, "data-query": q, "data-key": k,
        "data-weight": String(w),
      }, lines);
    }));
  }
  const label = (text, x, y, side, index, anchor) => {
    const t = svgElement("text", { x, y, "text-anchor": anchor, class: `token ${side}`,
      "data-side": side, "data-index": index }, svg);
    t.textContent = text;
    t.addEventListener("mouseenter", () => focusToken(side, index));
    t.addEventListener("mouseleave", () => focusToken(null, null));
  };
  queries.labels.forEach((text, i) => label(text, left - 8, i * row + 19, "query", i, "end"));
  keys.labels.forEach((text, i) => label(text, right + 8, i * row + 19, "key", i, "start"));
}

// Shows only the lines of one token (side "query" or "key"); all of them for side null.
function focusToken(side, index) {
  for (const line of $("head-lines").children) {
    const shown = side === null || line.dataset[side] === String(index);
    line.style.display = shown ? "" : "none";
  }
  for (const t of $("head-svg").querySelectorAll("text.token")) {
    t.classList.toggle("focus", t.dataset.side === side && t.dataset.index === String(index));
  }
}

function renderModelView() {
  const group = state.groups.get(state.module);
  const heads = state.info.heads;
  const grid = clear($("model-grid"));
  grid.style.gridTemplateColumns = `4rem repeat(${heads}, max-content)`;
  group.forEach((module, layer) => {
    const { queries, keys } = axesOf(module);
    const cell = Math.max(1, Math.floor(110 / Math.max(queries.labels.length, keys.labels.length)));
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = `layer ${layer}`;
    grid.appendChild(name);
    for (let h = 0; h < heads; h++) {
      const canvas = document.createElement("canvas");
      canvas.width = keys.labels.length * cell;
      canvas.height = queries.labels.length * cell;
      canvas.title = `layer ${layer}, head ${h}`;
      canvas.dataset.layer = layer;
      canvas.dataset.head = h;
      const context = canvas.getContext("2d");
      weights(module, h, queries, keys).forEach((wRow, q) => wRow.forEach((w, k) => {
        context.fillStyle = heatColour(w);
        context.fillRect(k * cell, q * cell, cell, cell);
      }));
      canvas.addEventListener("click", () => { state.opened = { layer, head: h }; renderOpened(); });
      grid.appendChild(canvas);
    }
  });
  renderOpened();
}

// The model view's opened map: one layer and head, large, tokens on both axes.
function renderOpened() {
  const box = clear($("model-open"));
  if (!state.opened) return;
  const { layer, head } = state.opened;
  const module = state.groups.get(state.module)[layer];
  if (!module) return;
  const { queries, keys } = axesOf(module);
  const cell = 18, top = 60, left = 120;
  const title = document.createElement("h3");
  title.textContent = `${module.title}, layer ${layer}, head ${head}`;
  box.appendChild(title);
  const svg = svgElement("svg", { id: "opened-map", width: left + keys.labels.length * cell + 10,
    height: top + queries.labels.length * cell + 10 }, box);
  weights(module, head, queries, keys).forEach((wRow, q) => wRow.forEach((w, k) => {
    const rect = svgElement("rect", { x: left + k * cell, y: top + q * cell, width: cell, height: cell,
      fill: heatColour(w), "data-query": q, "data-key": k, "data-weight": String(w) }, svg);
    svgElement("title", {}, rect).textContent = `${queries.labels[q]} \u2192 ${keys.labels[k]}: ${w.toFixed(4)}`;
  }));
  queries.labels.forEach((text, q) => {
    svgElement("text", { x: left - 4, y: top + q * cell + 13, "text-anchor": "end" }, svg).textContent = text;
  });
  keys.labels.forEach((text, k) => {
    const x = left + k * cell + 13, y = top - 4;
    svgElement("text", { x, y, transform: `rotate(-60 ${x} ${y})` }, svg).textContent = text;
  });
}

// ------------------------------------------------------------------- query/key view
// Equation 1 for query i of head h, from the model's q and k vectors: the dot products,
// their scaling by sqrt(d_k), the softmax over the keys the mask lets it see, and the
// values it mixes. Causal: decoder self-attention sees keys 0..i only.
function attendOne(module, h, i) {
  const q = headRows(module.queries, h)[i];
  const ks = headRows(module.keys, h), vs = headRows(module.values, h);
  const causal = module.name.startsWith("decoder/") && module.name.endsWith("self_attention");
  const dots = ks.map((k) => k.reduce((sum, kd, d) => sum + q[d] * kd, 0));
  const scaled = dots.map((x) => x / Math.sqrt(q.length));
  const visible = ks.map((_, j) => !causal || j <= i);
  const top = Math.max(...scaled.filter((_, j) => visible[j]));
  const exps = scaled.map((x, j) => (visible[j] ? Math.exp(x - top) : 0));
  const total = exps.reduce((a, b) => a + b, 0);
  const probs = exps.map((e) => e / total);
  const output = vs[0].map((_, d) => vs.reduce((sum, v, j) => sum + probs[j] * v[d], 0));
  return { q, ks, vs, dots, scaled, visible, probs, output };
}

function vectorCells(vector, scale) {
  const cells = document.createElement("div");
  cells.className = "cells";
  vector.forEach((x, d) => {
    const span = document.createElement("span");
    const t = Math.max(-1, Math.min(1, x / scale));  // Red positive, blue negative.
    span.style.background = t >= 0 ? `rgba(214,39,40,${t})` : `rgba(31,119,180,${-t})`;
    span.title = `${d}: ${x.toFixed(4)}`;
    cells.appendChild(span);
  });
  return cells;
}

function vectorCell(row, vector, scale) {
  const cell = row.insertCell();
  cell.className = "vector";
  cell.appendChild(vectorCells(vector, scale));
}

function renderQKControls(module) {
  const box = clear($("qk-controls"));
  const heads = box.appendChild(document.createElement("div"));
  heads.append("Head ");
  for (let h = 0; h < state.info.heads; h++) {
    heads.appendChild(tokenButton(`${h}`, h === state.qkHead, "qk-head", () => { state.qkHead = h; render(); }));
  }
  const tokens = box.appendChild(document.createElement("div"));
  tokens.append("Query ");
  state.result.tokens[module.query_tokens].forEach((piece, i) => tokens.appendChild(
    tokenButton(piece, i === state.qkQuery, "qk-query", () => { state.qkQuery = i; render(); })));
}

function tokenButton(text, active, name, onClick) {
  const button = document.createElement("button");
  button.className = `token ${name}${active ? " active" : ""}`;
  button.textContent = text;
  button.addEventListener("click", onClick);
  return button;
}

function renderQKView() {
  const module = currentModule();
  state.qkQuery = Math.min(state.qkQuery, state.result.tokens[module.query_tokens].length - 1);
  renderQKControls(module);
  const { q, ks, vs, dots, scaled, visible, probs, output } = attendOne(module, state.qkHead, state.qkQuery);
  const keyPieces = state.result.tokens[module.key_tokens];
  const scale = (vectors) => Math.max(1e-9, ...vectors.flatMap((v) => Array.from(v, Math.abs)));
  const kScale = scale([q, ...ks]), vScale = scale(vs);
  const table = document.createElement("table");
  table.id = "qk";
  const headRow = table.insertRow();
  for (const text of ["key", "k\u2c7c", "q\u00b7k\u2c7c", `\u00f7\u221a${q.length}`, "softmax", "", "v\u2c7c"]) {
    headRow.appendChild(document.createElement("th")).textContent = text;
  }
  const queryRow = table.insertRow();
  queryRow.insertCell().textContent = `q: ${state.result.tokens[module.query_tokens][state.qkQuery]}`;
  vectorCell(queryRow, q, kScale);
  ks.forEach((k, j) => {
    const row = table.insertRow();
    row.dataset.key = j;
    row.insertCell().textContent = keyPieces[j];
    vectorCell(row, k, kScale);
    const number = (value, className, text) => {
      const cell = row.insertCell();
      cell.className = className;
      cell.dataset.value = String(value);
      cell.textContent = text ?? value.toFixed(3);
    };
    number(dots[j], "dot");
    number(scaled[j], "scaled");
    if (visible[j]) number(probs[j], "softmax", probs[j].toFixed(4));
    else number(0, "softmax masked", "masked");
    const bar = row.insertCell().appendChild(document.createElement("span"));
    bar.className = "bar";
    bar.style.width = `${Math.round(probs[j] * 120)}px`;
    vectorCell(row, vs[j], vScale);
  });
  const outRow = table.insertRow();
  outRow.id = "qk-output";
  outRow.insertCell().textContent = "\u03a3 softmax\u2c7c v\u2c7c";
  for (let c = 0; c < 5; c++) outRow.insertCell();
  vectorCell(outRow, output, vScale);
  clear($("qk-table")).appendChild(table);
}

// ---------------------------------------------------------------------- the page
function renderTabs() {
  const tabs = clear($("module-tabs"));
  for (const [key, group] of state.groups) {
    const button = document.createElement("button");
    button.textContent = Object.values(group)[0].title;  // Its first layer with this attention.
    button.dataset.module = key;
    button.classList.toggle("active", key === state.module);
    button.addEventListener("click", () => { state.module = key; state.opened = null; render(); });
    tabs.appendChild(button);
  }
  for (const button of $("view-tabs").children) button.classList.toggle("active", button.dataset.view === state.view);
  const layers = clear($("layer"));
  // The layers that have this kind of attention (a recurrent decoder attends from its top one).
  const present = Object.keys(state.groups.get(state.module)).map(Number);
  present.forEach((layer) => layers.add(new Option(`${layer}`, layer)));
  if (!present.includes(state.layer)) state.layer = present.at(-1);
  layers.value = state.layer;
  const heads = clear($("heads"));
  for (let h = 0; h < state.info.heads; h++) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" data-head="${h}"${state.heads.has(h) ? " checked" : ""}>` +
      `<span class="swatch" style="background:${HEAD_COLOURS[h % 16]}"></span>head ${h}`;
    label.firstChild.addEventListener("change", (e) => {
      if (e.target.checked) state.heads.add(h); else state.heads.delete(h);
      render();
    });
    heads.appendChild(label);
  }
}

function render() {
  renderTabs();
  for (const view of ["head", "model", "qk"]) $(`${view}-view`).classList.toggle("active", view === state.view);
  $("layer").parentElement.hidden = state.view === "model";  // The model view shows every layer,
  $("heads").hidden = state.view !== "head";  // the query/key view one head of its own.
  document.querySelector(".merge-option").hidden = state.view === "qk";  // q and k are per piece.
  $("decoder-note").textContent = state.module.startsWith("decoder/")
    ? "Decoder rows: the step that writes each output token; its query comes from the token before it (<s> first)."
    : "";
  if (state.view === "head") renderHeadView();
  else if (state.view === "model") renderModelView();
  else renderQKView();
  document.body.dataset.status = "ready";
}

function showResult(result) {
  state.result = result;
  state.groups = prepare(result);
  if (!state.groups.has(state.module)) state.module = state.groups.keys().next().value;
  state.opened = null;
  $("output-text").textContent = result.output;
  $("decoding-used").textContent = `(${result.decoding})`;
  $("result").hidden = false;
  render();
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
  if (text) document.body.dataset.status = "error";
}

function showInfo(info) {
  state.info = info;
  state.heads = new Set(Array.from({ length: info.heads }, (_, h) => h));
  const lm = info.kind === "decoder_only";
  const layers = lm ? `${info.layers.decoder} decoder layers` :
    `${info.layers.encoder} encoder + ${info.layers.decoder} decoder layers`;
  const name = { decoder_only: "Language model", rnn: "Recurrent encoder-decoder (LSTM)" }[info.kind];
  $("model-info").textContent = `${name || "Encoder-decoder"}: ${layers}, ` +
    `${info.heads} heads, d_model ${info.d_model}; checkpoint step ${info.steps.join(", ")}.`;
  $("input-label").textContent = lm ? "Prompt (continued greedily)" : "Source sentence";
  $("decoding").disabled = lm;
}

async function explain(event) {
  event.preventDefault();
  const beam = $("decoding").value === "beam";
  const body = { text: $("input-text").value, beam_size: beam ? Number($("beam-size").value) : 1,
    alpha: Number($("alpha").value) };
  showMessage("");
  document.body.dataset.status = "loading";
  $("explain").disabled = true;
  try {
    const response = await fetch("api/explain", { method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" } });
    const answer = await response.json();
    if (!response.ok) showMessage(answer.error);
    else showResult(answer);
  } catch (error) {
    showMessage(`The server did not answer: ${error}`);
  } finally {
    $("explain").disabled = false;
  }
}

function updateDecodingControls() {
  for (const element of document.querySelectorAll(".beam-only")) element.hidden = $("decoding").value !== "beam";
}

async function start() {
  $("view-tabs").addEventListener("click", (e) => {
    if (e.target.dataset.view) { state.view = e.target.dataset.view; render(); }
  });
  $("layer").addEventListener("change", (e) => { state.layer = Number(e.target.value); render(); });
  $("merge").addEventListener("change", (e) => { state.merge = e.target.checked; state.opened = null; render(); });
  $("decoding").addEventListener("change", updateDecodingControls);
  updateDecodingControls();
  const embedded = $("explorer-data");
  if (embedded) {  // An exported page: its examples are in it; no server.
    const { info, examples } = JSON.parse(embedded.textContent);
    showInfo(info);
    $("input-form").hidden = true;
    $("example-picker").hidden = false;
    examples.forEach((example, i) => $("example").add(new Option(example.input, i)));
    $("example").addEventListener("change", (e) => showResult(examples[Number(e.target.value)]));
    showResult(examples[0]);
    return;
  }
  $("input-form").addEventListener("submit", explain);
  try {
    const response = await fetch("api/info");
    showInfo(await response.json());
    document.body.dataset.status = "idle";
  } catch (error) {
    showMessage(`The server did not answer: ${error}`);
  }
}

start();
