"""Find the book's evidence-only code cells and check that the rendered book collapses them.

A notebook cell whose only job is evidence -- pasting numbers into the prose with MyST-NB's glue,
asserting a conclusion, computing the bookkeeping values those need -- is collapsed in the rendered
book, so that the code that teaches stays in view (issue 26, "Bookkeeping out of the reader's way").
nbval still runs every cell; only the rendering changes.

**Evidence-only.** A code cell is evidence-only when it has at least one statement, at least one
``assert`` or glue call, and every top-level statement (parsed with ``ast``; IPython magics are
translated first) is one of:

* an ``assert``;
* a glue call as a statement: ``glue(...)``, ``anything.glue(...)``, or a call to a *glue wrapper*,
  a function the notebook defines at top level whose body (after its docstring) holds only these
  statements (ch10's ``def g(key, value): glue(f'ch10_{key}', value, display=False)``);
* a bookkeeping assignment (``=``, ``+=``, annotated) or import: every name it binds (for a target
  ``d[k]`` or ``d.x``, the name ``d``) is read in the cell, and only by glue calls, asserts and other
  bookkeeping statements (``v = compare_seeds(...)`` read only by ``glue('k_verdict', v.words)``).
  A name that a *later* cell reads in code that is not itself evidence (before rebinding it) is not
  bookkeeping: the cell feeds the code the reader follows, so its code stays open;
* a ``for``, ``if`` or ``with`` block whose body (and ``else``) holds only these statements (the loop
  and ``as`` names obey the bookkeeping rule, except that they need not be read);
* ``pass``.

Cells tagged ``remove-cell`` are ignored (they are not rendered), though a later-cell read in one
still counts.

**The rule.** Every evidence-only cell carries ``hide-input`` (its code collapsed under "Show code
cell source"), ``hide-cell`` (code and output collapsed) or ``remove-input`` (code dropped). A cell
may use ``remove-input`` only when it displays nothing: its only outputs are glue's hidden records
(``glue(..., display=False)``); a print, a table, a figure, a warning or ``glue(...)`` with the default
``display=True`` needs ``hide-input``.

**Mixed cells** (reported, never a failure): a cell whose code is shown and whose last top-level
statements are evidence (glue calls, asserts, their bookkeeping) after other code -- a candidate for
moving the evidence into a collapsed cell of its own.

Usage: ``python tests/evidence_cells.py book/ch01_formula.ipynb ...`` prints each violation (notebook,
cell index, first line) and then, as a separate section, the mixed cells; exits 1 if any notebook
has a violation (0 if none). ``python tests/evidence_cells.py book/X.ipynb --explain 12`` says, statement
by statement, how the rule reads cell 12 (and why a statement is not evidence).
"""
from __future__ import annotations

import ast
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

GLUE_PREFIX = "application/papermill.record/"
COLLAPSING_TAGS = ("hide-input", "hide-cell", "remove-input")
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
BINDERS = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Import, ast.ImportFrom)
LOOPS_WITHS = (ast.For, ast.AsyncFor, ast.With, ast.AsyncWith)
BLOCKS = LOOPS_WITHS + (ast.If,)
NESTED = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)

# ---------------------------------------------------------------------------------------------
# Parsing


def cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def cell_tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def parse_source(source: str) -> ast.Module | None:
    """The cell's module AST (IPython magics translated to Python first); None if it does not parse."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        source = TransformerManager().transform_cell(source)
    except ImportError:  # pragma: no cover - IPython is in the book's environment
        source = "\n".join("pass" if line.lstrip().startswith(("%", "!")) else line
                           for line in source.splitlines())
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def _target_names(target: ast.AST) -> set[str]:
    """Names an assignment target binds or mutates: x, (a, *b), d[k] and d.x (-> d)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_target_names(t) for t in target.elts)) if target.elts else set()
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    if isinstance(target, (ast.Subscript, ast.Attribute)):
        base = target.value
        while isinstance(base, (ast.Subscript, ast.Attribute, ast.Call)):
            base = base.func if isinstance(base, ast.Call) else base.value
        return {base.id} if isinstance(base, ast.Name) else set()
    return set()


def bound_names(stmt: ast.stmt) -> set[str]:
    """The names a binder (assignment, import, for, with) binds."""
    if isinstance(stmt, ast.Assign):
        return set().union(*(_target_names(t) for t in stmt.targets))
    if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        return _target_names(stmt.target)
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        return _target_names(stmt.target)
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return set().union(*(_target_names(i.optional_vars) for i in stmt.items if i.optional_vars))
    return set()


def _alias_names(stmt: ast.Import | ast.ImportFrom) -> set[str]:
    return {(a.asname or a.name).split(".")[0] for a in stmt.names if a.name != "*"}


def rebound_names(stmt: ast.stmt) -> set[str]:
    """Names a top-level statement (re)binds in the notebook's namespace: assignment and loop
    targets, ``as`` names, imports, functions and classes (not the names inside their scopes)."""
    names: set[str] = set()
    stack: list[ast.AST] = [stmt]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= _alias_names(node)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        if isinstance(node, SCOPES):
            names.add(node.name)
            continue
        if isinstance(node, NESTED):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return names


def _scope_locals(node: ast.AST) -> set[str]:
    """Names local to a function, lambda, class or comprehension (nested scopes' own locals
    included: a slight over-approximation), less those it declares global."""
    names: set[str] = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        a = node.args
        names |= {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
        names |= {x.arg for x in (a.vararg, a.kwarg) if x}
    declared: set[str] = set()
    for n in ast.walk(node):
        if n is not node and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.arg):
            names.add(n.arg)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            declared |= set(n.names)
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            names.add(n.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names |= _alias_names(n)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            names.add(n.name)
    return names - declared


def reads(node: ast.AST) -> list[str]:
    """Names `node` reads from the scope it sits in (a function's, lambda's, class's or
    comprehension's own names left out; the names its body reads from outside kept)."""
    out: list[str] = []

    def visit(n: ast.AST) -> None:
        if isinstance(n, ast.Name):
            if isinstance(n.ctx, ast.Load):
                out.append(n.id)
            return
        if isinstance(n, SCOPES + NESTED):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                outer = n.args.defaults + [d for d in n.args.kw_defaults if d is not None]
                outer += getattr(n, "decorator_list", [])
                inner = n.body if isinstance(n.body, list) else [n.body]
            elif isinstance(n, ast.ClassDef):
                outer = n.decorator_list + n.bases + [k.value for k in n.keywords]
                inner = n.body
            else:
                outer = [n.generators[0].iter]
                inner = [g for g in n.generators] + [getattr(n, f) for f in ("elt", "key", "value")
                                                      if hasattr(n, f)]
            for part in outer:
                visit(part)
            local = _scope_locals(n)
            sub = reads_all(inner)
            out.extend(name for name in sub if name not in local)
            return
        for child in ast.iter_child_nodes(n):
            visit(child)

    def reads_all(nodes: list[ast.AST]) -> list[str]:
        saved = len(out)
        for part in nodes:
            visit(part)
        result = out[saved:]
        del out[saved:]
        return result

    visit(node)
    return out


def free_reads(body: list[ast.stmt], skip: list[bool] | None = None) -> set[str]:
    """Names a cell reads before it binds them itself, in execution order; top-level statements
    flagged in `skip` (evidence) bind their names but their reads are not counted."""
    bound: set[str] = set()
    free: set[str] = set()

    def read(node: ast.AST | None) -> None:
        if node is not None:
            free.update(n for n in reads(node) if n not in bound)

    def bind(node: ast.AST | None) -> None:
        if node is not None:
            bound.update(n.id for n in ast.walk(node)
                         if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))

    def run(stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.Assign):
            read(stmt.value)
            for target in stmt.targets:
                read(target)
                bind(target)
        elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
            if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
                if stmt.target.id not in bound:
                    free.add(stmt.target.id)
            read(stmt.value)
            read(stmt.target)
            bind(stmt.target)
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            read(stmt.iter)
            read(stmt.target)
            bind(stmt.target)
            for child in stmt.body + stmt.orelse:
                run(child)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                read(item.context_expr)
                read(item.optional_vars)
                bind(item.optional_vars)
            for child in stmt.body:
                run(child)
        elif isinstance(stmt, (ast.If, ast.While)):
            read(stmt.test)
            for child in stmt.body + stmt.orelse:
                run(child)
        elif isinstance(stmt, ast.Try):
            for child in stmt.body:
                run(child)
            for handler in stmt.handlers:
                read(handler.type)
                if handler.name:
                    bound.add(handler.name)
                for child in handler.body:
                    run(child)
            for child in stmt.orelse + stmt.finalbody:
                run(child)
        elif isinstance(stmt, SCOPES):
            bound.add(stmt.name)          # the body runs later, when the name is bound
            read(stmt)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            bound.update(_alias_names(stmt))
        else:
            read(stmt)

    for k, stmt in enumerate(body):
        if skip is not None and skip[k]:
            bound.update(rebound_names(stmt))
        else:
            run(stmt)
    return free


def _header(stmt: ast.stmt) -> list[ast.AST]:
    """The expressions of a block's own line (the loop's iterable, the test, the context managers)."""
    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        return [stmt.target, stmt.iter]
    if isinstance(stmt, ast.If):
        return [stmt.test]
    return [part for item in stmt.items for part in (item.context_expr, item.optional_vars) if part]


def _units(body: list[ast.stmt]):
    """Each statement of `body`, and recursively of the bodies of its for/if/with blocks."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, BLOCKS):
            yield from _units(list(stmt.body) + list(getattr(stmt, "orelse", [])))


def _loads(stmt: ast.stmt) -> list[str]:
    """Names read by `stmt` itself (for a for/if/with block: by its header only)."""
    parts = _header(stmt) if isinstance(stmt, BLOCKS) else [stmt]
    return [name for part in parts for name in reads(part)]


# ---------------------------------------------------------------------------------------------
# Classifying one cell


def is_glue_call(node: ast.AST, glue_names: frozenset[str] = frozenset({"glue"})) -> bool:
    """`glue(...)`, `x.glue(...)` or a call to a glue wrapper named in `glue_names`."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return ((isinstance(func, ast.Name) and (func.id == "glue" or func.id in glue_names))
            or (isinstance(func, ast.Attribute) and func.attr == "glue"))


@dataclass
class CellAnalysis:
    """What the evidence rule sees in one cell's code."""

    kind: str                 # "evidence", "code" (anything else), "empty" (no statement), "unparsable"
    tail_line: int | None = None       # mixed cells: 1-based line where the trailing evidence starts
    tail_statements: int = 0           # mixed cells: how many top-level statements it holds
    evidence: list[bool] = field(default_factory=list)   # per top-level statement
    reasons: list[str] = field(default_factory=list)     # per top-level statement: why not evidence

    @property
    def mixed(self) -> bool:
        return self.kind == "code" and self.tail_statements > 0


def analyse(body: list[ast.stmt], glue_names: frozenset[str] = frozenset({"glue"}),
            read_later: set[str] | frozenset[str] = frozenset()) -> CellAnalysis:
    """Classify the statements `body` (a cell's, or a function's). `read_later`: names that later
    cells read in code that is not evidence; an assignment binding one of them is not bookkeeping."""
    if not body:
        return CellAnalysis("empty")
    units = list(_units(body))
    where: dict[str, list[ast.stmt]] = {}          # name -> the innermost units that read it
    for unit in units:
        for name in _loads(unit):
            where.setdefault(name, []).append(unit)
    accepted = {id(u) for u in units if isinstance(u, BINDERS + LOOPS_WITHS)}

    def evidence(stmt: ast.stmt) -> bool:
        if isinstance(stmt, (ast.Assert, ast.Pass)):
            return True
        if isinstance(stmt, ast.Expr):
            return is_glue_call(stmt.value, glue_names)
        if isinstance(stmt, BINDERS):
            return id(stmt) in accepted
        if isinstance(stmt, BLOCKS):
            if isinstance(stmt, LOOPS_WITHS) and id(stmt) not in accepted:
                return False
            return all(evidence(s) for s in list(stmt.body) + list(getattr(stmt, "orelse", [])))
        return False

    why: dict[int, str] = {}                        # a binder left out of the bookkeeping -> why
    changed = True
    while changed:                                  # the largest self-consistent set of bookkeeping
        changed = False
        for unit in units:
            if id(unit) not in accepted:
                continue
            names = bound_names(unit)
            readers = [(n, u) for n in sorted(names) for u in where.get(n, []) if u is not unit]
            later = sorted(names & set(read_later))
            code = [(n, u) for n, u in readers if not evidence(u)]
            if isinstance(unit, BINDERS) and not readers:
                why[id(unit)] = f"binds {', '.join(sorted(names)) or 'nothing'}, read nowhere in the cell"
            elif later:
                why[id(unit)] = f"binds {', '.join(later)}, read by a later cell's code"
            elif code:
                name, reader = code[0]
                why[id(unit)] = f"binds {name}, read by code that is not evidence (line {reader.lineno})"
            else:
                continue
            accepted.discard(id(unit))
            changed = True

    def reason(stmt: ast.stmt) -> str:
        """Why a statement is not evidence ("" if it is)."""
        if evidence(stmt):
            return ""
        if id(stmt) in why:
            return why[id(stmt)]
        if isinstance(stmt, ast.Expr):
            return "an expression that is not a glue call"
        if isinstance(stmt, BLOCKS):
            inner = next(s for s in list(stmt.body) + list(getattr(stmt, "orelse", []))
                         if not evidence(s))
            return f"its block holds line {inner.lineno}: {reason(inner)}"
        return f"a {type(stmt).__name__} statement"

    flags = [evidence(s) for s in body]
    reasons = [reason(s) for s in body]
    has_evidence = any(isinstance(u, ast.Assert)
                       or (isinstance(u, ast.Expr) and is_glue_call(u.value, glue_names))
                       for u in units)
    if all(flags) and has_evidence:
        return CellAnalysis("evidence", evidence=flags, reasons=reasons)
    tail = 0
    while tail < len(flags) and flags[len(flags) - 1 - tail]:
        tail += 1
    tail_units = list(_units(body[len(body) - tail:])) if tail else []
    if tail and tail < len(body) and any(
            isinstance(u, ast.Assert) or (isinstance(u, ast.Expr) and is_glue_call(u.value, glue_names))
            for u in tail_units):
        return CellAnalysis("code", body[len(body) - tail].lineno, tail, flags, reasons)
    return CellAnalysis("code", evidence=flags, reasons=reasons)


def classify_source(source: str, glue_names: frozenset[str] = frozenset({"glue"}),
                    read_later: set[str] | frozenset[str] = frozenset()) -> CellAnalysis:
    """Classify one cell's source on its own (see `analyse`)."""
    tree = parse_source(source)
    if tree is None:
        return CellAnalysis("unparsable")
    return analyse(tree.body, glue_names, read_later)


# ---------------------------------------------------------------------------------------------
# A whole notebook


def glue_wrappers(trees: list[ast.Module | None]) -> frozenset[str]:
    """Names of the top-level functions whose body (after a docstring) only glues or asserts."""
    defs = [s for t in trees if t is not None for s in t.body
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
    names: frozenset[str] = frozenset({"glue"})
    while True:
        found = set(names)
        for d in defs:
            body = d.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                body = body[1:]
            if analyse(body, names).kind == "evidence":
                found.add(d.name)
        if found == names:
            return names
        names = frozenset(found)


@dataclass(frozen=True)
class CodeCell:
    """One code cell of a notebook, classified."""

    index: int                # 0-based index into nb["cells"]
    tags: tuple[str, ...]
    kind: str                 # "evidence", "code", "empty", "unparsable"
    first_line: str
    visible_outputs: int      # outputs the book renders (everything but glue's hidden records)
    tail_line: int | None = None
    tail_statements: int = 0
    statements: tuple[tuple[int, str], ...] = ()   # (line, why it is not evidence or "") per statement

    @property
    def removed(self) -> bool:
        return "remove-cell" in self.tags

    @property
    def evidence_only(self) -> bool:
        return self.kind == "evidence" and not self.removed

    @property
    def input_shown(self) -> bool:
        return not self.removed and not set(COLLAPSING_TAGS) & set(self.tags)

    @property
    def mixed(self) -> bool:
        return self.kind == "code" and self.tail_statements > 0 and self.input_shown

    def problem(self) -> str | None:
        """Why this cell breaks the rule, or None."""
        if not self.evidence_only:
            return None
        if not set(COLLAPSING_TAGS) & set(self.tags):
            return ("evidence-only cell shows its code: tag it hide-input"
                    + ("" if self.visible_outputs else " (or remove-input: it displays nothing)"))
        if ("remove-input" in self.tags and self.visible_outputs
                and not {"hide-input", "hide-cell"} & set(self.tags)):
            return (f"remove-input on a cell that displays {self.visible_outputs} output(s): "
                    "use hide-input")
        return None


def is_glue_record(output: dict) -> bool:
    """An output that glue(..., display=False) writes: MyST-NB keeps it out of the page."""
    data = output.get("data", {})
    return (output.get("output_type") == "display_data"
            and "scrapbook" in output.get("metadata", {})
            and bool(data) and all(key.startswith(GLUE_PREFIX) for key in data))


def visible_outputs(cell: dict) -> int:
    return sum(1 for output in cell.get("outputs", []) if not is_glue_record(output))


def classify_notebook(nb: dict) -> list[CodeCell]:
    """Every code cell of a parsed notebook, classified (remove-cell ones too, marked removed)."""
    cells = [(i, c) for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"]
    trees = [parse_source(cell_source(c)) for _, c in cells]
    glue_names = glue_wrappers(trees)
    local = [analyse(t.body, glue_names) if t is not None else CellAnalysis("unparsable")
             for t in trees]
    later_reads = [free_reads(t.body, a.evidence or None) if t is not None else set()
                   for t, a in zip(trees, local)]
    rebinds = [set().union(*map(rebound_names, t.body)) if t is not None and t.body else set()
               for t in trees]
    result = []
    for k, ((index, cell), tree) in enumerate(zip(cells, trees)):
        if tree is None:
            analysis, lines = local[k], []
        else:
            alive = set().union(*(bound_names(u) | rebound_names(u) for u in _units(tree.body)))
            read_later: set[str] = set()
            for j in range(k + 1, len(cells)):
                if not alive:
                    break
                read_later |= later_reads[j] & alive
                alive -= rebinds[j]
            analysis = analyse(tree.body, glue_names, read_later)
            lines = [stmt.lineno for stmt in tree.body]
        source = cell_source(cell)
        first = next((line.strip() for line in source.splitlines() if line.strip()), "")
        result.append(CodeCell(index, tuple(cell_tags(cell)), analysis.kind, first,
                               visible_outputs(cell), analysis.tail_line, analysis.tail_statements,
                               tuple(zip(lines, analysis.reasons))))
    return result


def read_notebook(path: str | Path) -> dict:
    path = Path(path)
    if path.suffix != ".ipynb":
        raise ValueError(f"path must be a .ipynb notebook, got {str(path)!r}")
    return json.loads(path.read_text(encoding="utf-8"))


def evidence_cells(path: str | Path) -> list[CodeCell]:
    """The notebook's evidence-only cells (remove-cell ones left out)."""
    return [c for c in classify_notebook(read_notebook(path)) if c.evidence_only]


def violations(path: str | Path) -> list[tuple[CodeCell, str]]:
    """(cell, problem) for each evidence-only cell of the notebook that breaks the rule."""
    return [(c, c.problem()) for c in classify_notebook(read_notebook(path)) if c.problem()]


def mixed_cells(path: str | Path) -> list[CodeCell]:
    """Cells whose code is shown and ends in evidence after other code (a report, not a failure)."""
    return [c for c in classify_notebook(read_notebook(path)) if c.mixed]


def explain(path: str | Path, index: int) -> list[str]:
    """Lines saying how the rule reads cell `index` of the notebook, statement by statement."""
    cells = {c.index: c for c in classify_notebook(read_notebook(path))}
    if index not in cells:
        raise ValueError(f"{path}: cell {index} is not a code cell")
    cell = cells[index]
    head = f"{path}: cell {index} ({', '.join(cell.tags) or 'no tags'}): " + (
        "evidence-only" if cell.evidence_only else "removed (remove-cell)" if cell.removed
        else f"mixed, evidence from line {cell.tail_line}" if cell.mixed else cell.kind)
    return [head] + [f"  line {line}: " + (why or "evidence") for line, why in cell.statements]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n\n")[-1].strip())
        return 2
    if "--explain" in argv:
        k = argv.index("--explain")
        try:
            path, index = argv[k - 1] if k else argv[k + 2], int(argv[k + 1])
        except (IndexError, ValueError):
            print("usage: python tests/evidence_cells.py book/X.ipynb --explain CELL_INDEX", file=sys.stderr)
            return 2
        print("\n".join(explain(path, index)))
        return 0
    total = 0
    mixed = []
    for arg in argv:
        cells = classify_notebook(read_notebook(arg))
        for cell in cells:
            if cell.problem():
                total += 1
                print(f"{arg}: cell {cell.index}: {cell.problem()} | {cell.first_line}")
        mixed += [(arg, c) for c in cells if c.mixed]
    print(f"{total} violation(s) in {len(argv)} notebook(s)")
    if mixed:
        print("\nMixed cells (not a failure): evidence at the end of a cell whose code is shown;"
              " candidates for a collapsed cell of their own")
        for arg, cell in mixed:
            print(f"{arg}: cell {cell.index}: last {cell.tail_statements} statement(s) from line "
                  f"{cell.tail_line} | {cell.first_line}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
