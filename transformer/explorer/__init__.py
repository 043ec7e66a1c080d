"""The attention explorer: a page that shows which tokens a trained model attends to, served
by `explore.py` or exported as one self-contained HTML file."""
