"""Recipes -> stage nodes. Plain data and pure functions: no torch, no I/O beyond the recipes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bmbuild.errors import BmbuildError
from bmbuild.recipe import LoadedRecipe
from bmbuild.stages import Stage, all_stages


@dataclass(eq=False)
class Node:
    """One stage of one recipe."""

    loaded: LoadedRecipe
    stage: Stage
    toolchain: str
    deps: list["Node"] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.loaded.name}:{self.stage.name}"

    @property
    def recipe_name(self) -> str:
        return self.loaded.name

    def __repr__(self) -> str:
        return f"Node({self.id})"


def recipe_nodes(loaded: LoadedRecipe, toolchain: str, stages: list[Stage]) -> list[Node]:
    """The stages that apply to one recipe, wired to their upstream stages."""
    recipe = loaded.recipe
    nodes: dict[str, Node] = {}
    for stage in stages:
        if not stage.applies(recipe):
            continue
        node = Node(loaded, stage, toolchain)
        node.deps = [nodes[name] for name in stage.upstream_for(recipe, set(nodes))]
        nodes[stage.name] = node
    return list(nodes.values())


def build_graph(recipes: list[LoadedRecipe], toolchains: dict[str, str],
                only_stages: list[str] | None = None) -> list[Node]:
    """Every node of every recipe, in a dependency order (upstream first).

    `toolchains` maps recipe name -> resolved toolchain name. `only_stages` keeps the named
    stages and everything they need (like `make target`).
    """
    stages = all_stages()
    known = {s.name for s in stages}
    for name in only_stages or []:
        if name not in known:
            raise BmbuildError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in stages)}")
    nodes: list[Node] = []
    for loaded in recipes:
        nodes.extend(recipe_nodes(loaded, toolchains[loaded.name], stages))
    if only_stages:
        nodes = with_dependencies([n for n in nodes if n.stage.name in only_stages])
    return nodes


def with_dependencies(targets: list[Node]) -> list[Node]:
    """The targets and everything upstream of them, upstream first."""
    ordered: list[Node] = []
    seen: set[int] = set()

    def visit(node: Node) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        for dep in node.deps:
            visit(dep)
        ordered.append(node)

    for node in targets:
        visit(node)
    return ordered


def input_name(path: Path, loaded: LoadedRecipe) -> str:
    """How an external input is named in the key: relative to the recipe, so clones agree."""
    base = loaded.file.parent.resolve()
    try:
        return str(path.resolve().relative_to(base))
    except ValueError:
        import os

        return os.path.relpath(path.resolve(), base)


def to_dot(nodes: list[Node]) -> str:
    """The stage graph in Graphviz DOT (one cluster per recipe)."""
    lines = ["digraph bmbuild {", "  rankdir=LR;", "  node [shape=box];"]
    by_recipe: dict[str, list[Node]] = {}
    for node in nodes:
        by_recipe.setdefault(node.recipe_name, []).append(node)
    for index, (recipe, members) in enumerate(by_recipe.items()):
        lines.append(f'  subgraph cluster_{index} {{ label="{recipe}";')
        lines += [f'    "{n.id}" [label="{n.stage.name}"];' for n in members]
        lines.append("  }")
    lines += [f'  "{dep.id}" -> "{node.id}";' for node in nodes for dep in node.deps]
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_text(nodes: list[Node]) -> str:
    """The stage graph as indented text: each node with the nodes it needs."""
    lines = []
    for node in nodes:
        needs = ", ".join(dep.stage.name for dep in node.deps) or "-"
        lines.append(f"{node.id:<40} needs {needs}  [{node.toolchain}]")
    return "\n".join(lines) + "\n"
