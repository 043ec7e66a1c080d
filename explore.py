"""Explores a trained model's attention in the browser: a local web server, or one exported
HTML file that opens offline.

  python explore.py --workdir /tmp/quickstart                    # http://127.0.0.1:8000
  python explore.py --workdir DIR --port 8080 --average_last 5
  python explore.py --workdir DIR --export page.html --input sentences.txt [--beam_size 4]

Type a source sentence (a prompt, for a language model); the page shows the model's output
and its attention three ways: the head view (lines between tokens, one colour per head), the
model view (every layer and head at once) and the query/key view (equation 1 for one query,
on the model's own vectors). The server listens on 127.0.0.1 unless --host says otherwise;
--export writes one file with the page and every line of --input explained in it.
"""

import sys

from absl import app, flags

from transformer import inference
from transformer.errors import cli_main
from transformer.explorer.analysis import Explainer, InputError
from transformer.explorer.server import export_page, make_server

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every one).")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free one).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_AVERAGE = flags.DEFINE_integer(
    "average_last", 1, "Average this many checkpoints up to --step.", lower_bound=1
)
_EXPORT = flags.DEFINE_string("export", None, "Write a self-contained HTML file here instead.")
_INPUT = flags.DEFINE_string("input", None, "With --export: sentences, one per line; - = stdin.")
_BEAM = flags.DEFINE_integer("beam_size", 1, "With --export: 1 is greedy.", lower_bound=1)
_ALPHA = flags.DEFINE_float("alpha", 0.6, "With --export: beam search's length penalty.")


def sentences_to_export() -> list[tuple[int, str]]:
    """(line number, sentence) of --input's non-blank lines, read before the model loads."""
    if _INPUT.value is None:
        raise InputError("--export needs --input: a file of sentences, one per line.")
    lines = inference.read_lines(_INPUT.value)
    sentences = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not sentences:
        raise InputError(f"{_INPUT.value} has no sentence to explain.")
    return sentences


def export(explainer: Explainer, sentences: list[tuple[int, str]]) -> None:
    """Explains every sentence and writes the page; nothing is written on an error."""
    examples = []
    for number, sentence in sentences:
        try:
            examples.append(explainer.explain(sentence, _BEAM.value, _ALPHA.value))
        except InputError as e:
            raise InputError(f"{_INPUT.value}:{number}: {e}") from None
    export_page(explainer.info(), examples, _EXPORT.value)
    print(f"Wrote {_EXPORT.value}: {len(examples)} sentences explained.")


def serve(explainer: Explainer) -> None:
    server = make_server(explainer, _HOST.value, _PORT.value)
    host, port = server.server_address[:2]
    print(f"Serving the attention explorer on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
    finally:
        server.server_close()


def explore() -> None:
    if _INPUT.value is not None and _EXPORT.value is None:
        raise InputError("--input is read only with --export.")
    sentences = sentences_to_export() if _EXPORT.value is not None else None
    explainer = Explainer(inference.restore(_WORKDIR.value, _STEP.value, _AVERAGE.value))
    if sentences is not None:
        export(explainer, sentences)
    else:
        serve(explainer)


if __name__ == "__main__":
    app.run(cli_main(explore))
