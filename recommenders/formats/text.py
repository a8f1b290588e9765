"""Number and date formatting shared by the human-readable formats (Markdown, HTML)."""

from __future__ import annotations

from datetime import datetime, timezone

GIB = float(1 << 30)


def money(x: float | None, currency: str = "") -> str:
    if x is None:
        return "–"
    text = f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"
    return f"{text} {currency}".strip()


def signed_money(x: float | None) -> str:
    if x is None:
        return "–"
    return ("+" if x > 0 else "−" if x < 0 else "±") + money(abs(x))


def pct(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def signed_pct(x: float | None) -> str:
    if x is None:
        return "new"
    if abs(x) < 0.005:
        return "±0%"
    return ("+" if x > 0 else "−" if x < 0 else "±") + f"{abs(100 * x):.0f}%"


def hours(x: float | None) -> str:
    return "–" if x is None else f"{x:,.1f}"


def gib(x: float | None) -> str:
    return "–" if x is None else f"{x / GIB:.1f} GiB"


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%a %d %b %Y")


def workload(r) -> str:
    get = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
    return f"{get('namespace')}/{get('workload_name')}"


def target(rec) -> str:
    """What a recommendation changes, in a few words."""
    if rec.type == "idle":
        return "release (0 GPUs)"
    if rec.type == "reduce-count":
        return f"{rec.current_gpus_per_pod:g} → {rec.target_gpus_per_pod:g} GPUs per pod"
    if rec.type == "downsize-model":
        return f"{rec.current_gpu_model} → {rec.target_gpu_model}"
    if rec.type == "mig":
        return f"MIG {rec.target_mig_profile} of {rec.target_gpu_model}"
    if rec.type == "share":
        n = rec.replicas or 0
        return f"{n:g} replicas on {round(n * (rec.target_gpus_per_pod or 0)):g} shared GPU(s)"
    return rec.type
