"""The layering of docs/architecture.md holds: every import inside tljax (function-level ones included)
goes to a module of the same layer or a lower one, and the module graph has no cycle."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "tljax"

# The table of docs/architecture.md: top-level module (or package) -> layer.
LAYERS = {
    1: ("utils", "sharding", "distributed"),
    2: ("config", "defaults", "policy", "lora", "state", "checkpoint", "metrics", "memory", "workdir", "objectives",
        "models", "data"),
    3: ("engine", "tasks", "pretrained", "word2vec"),
    4: ("init_from", "gguf_import", "hf", "classifier", "continued"),
    5: ("pretrain", "finetune", "zeroshot"),
    6: ("cli", "experiment", "failures", "__init__"),
}
LAYER = {name: layer for layer, names in LAYERS.items() for name in names}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every tljax module ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tljax"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE.parent / candidate.replace(".", "/")).is_dir() else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tljax."))
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.iterdir()
            if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())}
    assert tops <= set(LAYER), f"modules missing from docs/architecture.md's table: {sorted(tops - set(LAYER))}"


def test_imports_go_down_or_sideways():
    wrong = []
    for module, targets in graph().items():
        top = module.split(".")[1] if "." in module else "__init__"
        for target in targets:
            target_top = target.split(".")[1] if "." in target else "__init__"
            if LAYER[target_top] > LAYER[top]:
                wrong.append(f"{module} (layer {LAYER[top]}) imports {target} (layer {LAYER[target_top]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    edges = graph()
    # A package's __init__ importing its own submodules is how packages re-export: not an arrow back.
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges or nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)
