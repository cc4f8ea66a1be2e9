"""Similarity metrics between a reference tensor and a test tensor, and tolerance gates.

The metrics are the vendor's (tpu-mlir's cosine and euclidean similarity) plus SQNR, max abs
error and top-1 agreement. Results are plain data: they serialise to JSON for reports and a
`GateResult` is truthy when it passed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # numpy is imported where tensors are compared, not where gates are checked
    import numpy as np

EPS = 1e-12
SQNR_CEILING = 200.0


@dataclass(frozen=True)
class Similarity:
    """How close `test` is to `ref`. Larger is better except max_abs."""

    cos: float
    euclid: float
    sqnr: float
    max_abs: float
    top1: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __str__(self) -> str:
        text = f"cos={self.cos:.6f} euclid={self.euclid:.6f} sqnr={self.sqnr:.2f}dB max_abs={self.max_abs:.3g}"
        return text + (f" top1={self.top1:.4f}" if self.top1 is not None else "")


def similarity(ref: "np.ndarray", test: "np.ndarray", classifier: bool = False) -> Similarity:
    """Compare two tensors of one shape. `classifier`: rows of logits, also report top-1 agreement."""
    import numpy as np

    ref = np.asarray(ref, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if ref.shape != test.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {test.shape}")
    a, b = ref.ravel(), test.ravel()
    diff = a - b
    norm_a, norm_b, norm_diff = np.linalg.norm(a), np.linalg.norm(b), np.linalg.norm(diff)
    if norm_a < EPS and norm_b < EPS:
        cos = 1.0
    else:
        cos = float(np.dot(a, b) / max(norm_a * norm_b, EPS))
    mean_norm = np.linalg.norm((a + b) / 2)
    euclid = 1.0 if norm_diff < EPS else float(1.0 - norm_diff / max(mean_norm, EPS))
    signal = float(np.sum(a * a))
    noise = float(np.sum(diff * diff))
    # identical tensors have no noise: report a finite ceiling so the value stays valid JSON
    sqnr = SQNR_CEILING if noise == 0.0 else min(SQNR_CEILING, float(10 * np.log10(max(signal, EPS) / noise)))
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    top1 = None
    if classifier and ref.ndim >= 2:
        top1 = float(np.mean(ref.reshape(ref.shape[0], -1).argmax(1) == test.reshape(test.shape[0], -1).argmax(1)))
    return Similarity(cos=cos, euclid=euclid, sqnr=sqnr, max_abs=max_abs, top1=top1)


def worst(results: Iterable[Similarity]) -> Similarity:
    """The worst value of every metric over several comparisons (a gate must hold for all)."""
    items = list(results)
    if not items:
        raise ValueError("nothing to compare")
    top1s = [r.top1 for r in items if r.top1 is not None]
    return Similarity(
        cos=min(r.cos for r in items),
        euclid=min(r.euclid for r in items),
        sqnr=min(r.sqnr for r in items),
        max_abs=max(r.max_abs for r in items),
        top1=min(top1s) if top1s else None,
    )


def sample_rows(ref: "np.ndarray", test: "np.ndarray", rows: int) -> list[tuple["np.ndarray", "np.ndarray"]]:
    """One (ref, test) pair per sample of a batch of `rows` samples (axis 0 is the batch); an
    output without that batch axis is one pair."""
    if getattr(ref, "ndim", 0) and ref.shape[0] == rows and test.shape[0] == rows:
        return [(ref[i], test[i]) for i in range(rows)]
    return [(ref, test)]


def per_sample(pairs: Iterable[tuple["np.ndarray", "np.ndarray"]]) -> dict[str, Any]:
    """Mean and worst of the metrics over samples, whatever batch size produced them.

    The top level holds the means (max_abs: the largest error) and `top1`, for classifier
    outputs, the fraction of samples whose arg-max agrees; `worst` holds the worst sample's
    cos, euclid and sqnr. Gates read the top level.
    """
    import numpy as np

    items = list(pairs)
    if not items:
        raise ValueError("nothing to compare")
    sims = [similarity(ref, test) for ref, test in items]
    summary: dict[str, Any] = {
        "cos": float(np.mean([s.cos for s in sims])),
        "euclid": float(np.mean([s.euclid for s in sims])),
        "sqnr": float(np.mean([s.sqnr for s in sims])),
        "max_abs": max(s.max_abs for s in sims),
    }
    if all(np.ndim(ref) == 1 and np.size(ref) > 1 for ref, _ in items):
        summary["top1"] = float(np.mean([int(np.argmax(ref) == np.argmax(test)) for ref, test in items]))
    summary["samples"] = len(items)
    summary["worst"] = {"cos": min(s.cos for s in sims), "euclid": min(s.euclid for s in sims),
                        "sqnr": min(s.sqnr for s in sims)}
    return summary


def pooled_top1(results: Iterable[tuple["np.ndarray", "np.ndarray"]]) -> float:
    """Top-1 agreement over all rows of several (ref, test) logit batches."""
    import numpy as np

    agree = total = 0
    for ref, test in results:
        r = ref.reshape(ref.shape[0], -1).argmax(1)
        t = test.reshape(test.shape[0], -1).argmax(1)
        agree += int(np.sum(r == t))
        total += r.size
    return agree / total if total else 1.0


@dataclass
class GateResult:
    """The outcome of checking metrics against a tolerance; truthy when it passed."""

    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed


def check(name: str, sim: Similarity, tolerance: Any) -> GateResult:
    """Check one output's similarity against a Tolerance (cos, euclid, sqnr, max_abs, top1)."""
    failures = []
    if sim.cos < tolerance.cos:
        failures.append(f"{name}: cosine {sim.cos:.6f} < {tolerance.cos}")
    if sim.euclid < tolerance.euclid:
        failures.append(f"{name}: euclidean similarity {sim.euclid:.6f} < {tolerance.euclid}")
    if tolerance.sqnr is not None and sim.sqnr < tolerance.sqnr:
        failures.append(f"{name}: SQNR {sim.sqnr:.2f} dB < {tolerance.sqnr} dB")
    if tolerance.max_abs is not None and sim.max_abs > tolerance.max_abs:
        failures.append(f"{name}: max abs error {sim.max_abs:.3g} > {tolerance.max_abs}")
    if tolerance.top1 is not None and sim.top1 is not None and sim.top1 < tolerance.top1:
        failures.append(f"{name}: top-1 agreement {sim.top1:.4f} < {tolerance.top1}")
    return GateResult(failures)


def check_all(results: dict[str, dict[str, Any]], tolerance: Any) -> GateResult:
    """Gate every `{label: similarity-json}` entry; one failure line per metric missed."""
    gate = GateResult()
    for label, values in results.items():
        sim = Similarity(**{k: values.get(k) for k in ("cos", "euclid", "sqnr", "max_abs", "top1")})
        gate.failures.extend(check(label, sim, tolerance).failures)
    return gate


def latency_summary(latency: dict[str, dict[str, Any]] | None) -> str:
    """'latency b1 2.31ms (onnxruntime 0.412ms)' from a stage's `latency` metrics ('' without)."""
    if not latency:
        return ""
    parts = [f"{label} {_ms(values['ms'])}" + (f" (onnxruntime {_ms(values['onnxruntime_ms'])})"
                                                if "onnxruntime_ms" in values else "")
             for label, values in latency.items()]
    return "latency " + ", ".join(parts)


def _ms(value: float) -> str:
    """3 significant digits, without an exponent: 0.0437ms, 2.31ms, 213ms, 8662ms."""
    return f"{value:.0f}ms" if value >= 100 else f"{value:.3g}ms"


CODEGEN_GAP = 0.1  # interpreter cos above the bmodel's by more than this: not the quantization


def codegen_hint(metrics: dict[str, Any]) -> list[str]:
    """tpu-mlir: when its own interpreter runs the int8 model far closer to fp32 than the bmodel
    does, the loss is in code generation, not in what was quantized (tpu-mlir 1.30.2's asymmetric
    BM1684X bmodel of a LeViT: interpreter 0.978, bmodel 0.570), which per-layer advice alone would
    not say."""
    interpreter, cmp = metrics.get("interpreter_outputs"), metrics.get("cmp")
    if not interpreter or not cmp:
        return []
    bmodel, ideal = min(v["cos"] for v in cmp.values()), min(interpreter.values())
    if ideal - bmodel <= CODEGEN_GAP:
        return []
    mode = "asymmetric " if metrics.get("asymmetric") else ""
    return [f"the {mode}int8 bmodel (cos {bmodel:.4f}) is far from tpu-mlir's own interpreter of the same int8 model "
            f"(cos {ideal:.4f} on the first held-out sample): the loss is in tpu-mlir's code generation"
            + ("; try int8.asymmetric: false" if mode else "")]
