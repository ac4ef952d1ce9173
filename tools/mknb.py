"""Author a notebook from a plain-text cell list, then execute it in place.

Usage: python tools/mknb.py SOURCE.txt book/NAME.ipynb [--no-exec]

SOURCE holds cells separated by marker lines:
  ##MD                     a markdown cell
  ##CODE                   a code cell
  ##CODE tags=a,b          a code cell with tags (e.g. raises-exception, hide-input)
  ##CODE fig=NAME caption  a code cell whose figure output gets a numbered caption and a label
The notebook (not SOURCE) is what the book and the tests use; SOURCE is a drafting aid only.
"""
import sys

import nbformat
from nbclient import NotebookClient


def parse(text):
    cells, kind, meta, lines = [], None, {}, []

    def flush():
        if kind is None:
            return
        src = "\n".join(lines).strip("\n")
        cell = nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
        if meta:
            cell.metadata.update(meta)
        cells.append(cell)

    for line in text.splitlines():
        if line.startswith("##MD") or line.startswith("##CODE"):
            flush()
            kind = "md" if line.startswith("##MD") else "code"
            meta, lines = {}, []
            rest = line.split(None, 1)[1] if " " in line else ""
            if rest.startswith("tags="):
                meta["tags"] = rest[5:].split(",")
            elif rest.startswith("fig="):
                name, _, caption = rest[4:].partition(" ")
                meta["mystnb"] = {"figure": {"name": name, "caption": caption}}
        else:
            lines.append(line)
    flush()
    return cells


def main():
    src, dst = sys.argv[1], sys.argv[2]
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = parse(open(src).read())
    if "--no-exec" not in sys.argv:
        import os
        NotebookClient(nb, timeout=3600, kernel_name="python3",
                       resources={"metadata": {"path": os.path.dirname(os.path.abspath(dst))}}).execute()
    nbformat.write(nb, dst)


if __name__ == "__main__":
    main()
