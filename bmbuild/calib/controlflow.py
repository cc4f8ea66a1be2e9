"""Control flow that the recipe's constant inputs decide, folded before int8.

Exported models often pick their whole network with an `If` on an input: Silero VAD runs its 16 kHz
or its 8 kHz network by `sr == 16000`, so its top graph holds four nodes and every layer sits in
the If's branches, where calibration sees no tensor and quantization finds nothing to do. When the
recipe gives that input a constant value (`inputs: [{name: sr, value: 16000}]`), the condition is
known: the If is replaced by the nodes of the branch it takes, as a constant-folding pass would.
The input stays a graph input (callers feed it as before); the graph no longer reads it there.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Mapping

import numpy as np

GRAPH, GRAPHS = 5, 10  # onnx.AttributeProto types that hold subgraphs


def inline_constant_ifs(model: Any, constants: Mapping[str, np.ndarray]) -> list[str]:
    """Replace, in `model`'s top graph, every If whose condition follows from initializers,
    Constant nodes and the `constants` (input name -> value) by its taken branch, repeatedly (a
    taken branch may hold another such If); the names of the Ifs replaced, in order."""
    inlined: list[str] = []
    while True:
        graph = model.graph
        for index, node in enumerate(graph.node):
            if node.op_type != "If":
                continue
            condition = _evaluate(model, node.input[0], constants)
            if condition is None:
                continue
            branch = next(a.g for a in node.attribute if a.name == ("then_branch" if condition else "else_branch"))
            _inline(graph, index, branch, f"{node.name or 'If'}_{'then' if condition else 'else'}")
            inlined.append(node.name or f"If#{index}")
            break
        else:
            return inlined


def _ancestors(graph: Any, tensor: str) -> list[Any] | None:
    """The nodes `tensor` is computed from, in graph order, or None when a graph input or a node
    with a subgraph is among them (the value then depends on more than constants)."""
    producer = {out: node for node in graph.node for out in node.output}
    needed: dict[int, Any] = {}
    pending = [tensor]
    while pending:
        name = pending.pop()
        node = producer.get(name)
        if node is None:
            continue  # an initializer or a graph input: judged by the caller
        if any(a.type in (GRAPH, GRAPHS) for a in node.attribute):
            return None
        if id(node) not in needed:
            needed[id(node)] = node
            pending.extend(i for i in node.input if i)
    order = {id(node): i for i, node in enumerate(graph.node)}
    return sorted(needed.values(), key=lambda node: order[id(node)])


def _evaluate(model: Any, tensor: str, constants: Mapping[str, np.ndarray]) -> bool | None:
    """The boolean value of `tensor`, when constants alone decide it; else None."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    nodes = _ancestors(graph, tensor)
    if nodes is None:
        return None
    produced = {out for node in nodes for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    read = {i for node in nodes for i in node.input if i} | {tensor}
    sources = read - produced
    if any(name not in initializers and name not in constants for name in sources):
        return None  # depends on data the recipe does not fix
    feeds = {name: np.asarray(constants[name]) for name in sources if name not in initializers}
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
              for name, value in feeds.items()]
    sub = helper.make_graph(nodes, "condition", inputs, [helper.make_empty_tensor_value_info(tensor)],
                            [initializers[name] for name in sources if name in initializers])
    sub_model = helper.make_model(sub, opset_imports=model.opset_import)
    try:
        if tensor in feeds:
            value = feeds[tensor]
        elif tensor in initializers:
            value = numpy_helper.to_array(initializers[tensor])
        else:
            value = ReferenceEvaluator(sub_model).run(None, feeds)[0]
    except Exception:  # an op the reference evaluator lacks: leave the If alone
        return None
    value = np.asarray(value)
    return bool(value.reshape(-1)[0]) if value.size == 1 else None


def _inline(graph: Any, index: int, branch: Any, prefix: str) -> None:
    """The If at `graph.node[index]` -> the branch's nodes (names that clash with the graph's made
    unique) and one Identity per output (branch output -> If output)."""
    from onnx import helper

    node = graph.node[index]
    others = [n for i, n in enumerate(graph.node) if i != index]  # the If's own branches clash with nothing
    tensors = _tensor_names(graph, others)
    node_names = {n.name for n in _walk_nodes(others) if n.name}
    renames = _unique(_defined_tensors(branch), tensors, prefix)
    nodes = [_renamed(n, renames) for n in branch.node]
    node_renames = _unique([n.name for n in nodes if n.name], node_names, prefix)
    for new_node in nodes:
        new_node.name = node_renames.get(new_node.name, new_node.name)
    for out, target in zip(branch.output, node.output):
        nodes.append(helper.make_node("Identity", [renames.get(out.name, out.name)], [target],
                                      name=f"{prefix}/output_{target}"))
    for item, container in [(i, graph.initializer) for i in branch.initializer] + \
                           [(v, graph.value_info) for v in branch.value_info]:
        copy = type(item)()
        copy.CopyFrom(item)
        copy.name = renames.get(item.name, item.name)
        container.append(copy)
    del graph.node[index]
    for offset, new_node in enumerate(nodes):
        graph.node.insert(index + offset, new_node)


def _unique(names: list[str], taken: set[str], prefix: str) -> dict[str, str]:
    """New names for those of `names` already in `taken` (which gains every name used)."""
    renames = {}
    counter = itertools.count()
    for name in names:
        if name in taken:
            new = f"{prefix}/{name}"
            while new in taken:
                new = f"{prefix}/{name}_{next(counter)}"
            renames[name] = new
            name = new
        taken.add(name)
    return renames


def _tensor_names(graph: Any, nodes: list[Any]) -> set[str]:
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {i.name for i in graph.initializer}
    for node in _walk_nodes(nodes):
        names.update(node.output)
        names.update(node.input)
    return names


def _defined_tensors(branch: Any) -> list[str]:
    """Tensors a branch defines (its nodes' outputs, its initializers): the names that may clash."""
    names = [init.name for init in branch.initializer]
    names += [out for node in branch.node for out in node.output if out]
    return list(dict.fromkeys(names))


def _walk(graph: Any) -> Iterator[Any]:
    yield from _walk_nodes(graph.node)


def _walk_nodes(nodes: Any) -> Iterator[Any]:
    """The nodes and, depth first, those of their subgraphs."""
    for node in nodes:
        yield node
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == GRAPH else list(attribute.graphs)):
                yield from _walk(sub)


def _renamed(node: Any, renames: Mapping[str, str]) -> Any:
    """A copy of `node` with `renames` applied to its tensors, and to what its subgraphs read."""
    copy = type(node)()
    copy.CopyFrom(node)
    copy.input[:] = [renames.get(i, i) for i in copy.input]
    copy.output[:] = [renames.get(o, o) for o in copy.output]
    for attribute in copy.attribute:
        for sub in ([attribute.g] if attribute.type == GRAPH else list(attribute.graphs)):
            for nested in _walk(sub):
                nested.input[:] = [renames.get(i, i) for i in nested.input]
    return copy
