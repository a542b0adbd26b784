"""docs/benchmarks.md and README.md's summary (between its markers) from docs/benchmark_results/*.json:
`python -m benchmarks.docs` (`make benchmark-docs`), `--check` to exit 1 where a committed page is stale. The prose,
table layouts and their syntax are in docs/benchmark_results/benchmarks.md.in and summary.md.in."""

import argparse
import collections
import json
import re
import sys
from pathlib import Path

from .harness import RESULTS, ROOT, median, ratio


TEMPLATE, SUMMARY = RESULTS / "benchmarks.md.in", RESULTS / "summary.md.in"
PAGE = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- benchmark-summary:begin -->", "<!-- benchmark-summary:end -->"
FILTERS = {
    "median": median,
    "min": min,
    "max": max,
    "grey": lambda v: v * 255,
    "pct": lambda v: v * 100,
    "ms": lambda v: v * 1000,
    "giga": lambda v: v / 1e9,
    "mb": lambda v: v / 1e6,
    "minutes": lambda v: v / 60,
}


def upgrade(name: str, result: dict) -> dict:
    """Fills in what a table needs and older result files left to the reader, each from the file's own inputs."""
    kind = result.get("benchmark")
    if kind == "timeline":
        seconds, cpu = result["whole_video_seconds"], result["whole_video_cpu_seconds"]
        result.setdefault("speedup", ratio(median(seconds["per_window"]), median(seconds["timeline"])))
        result.setdefault("cpu_speedup", ratio(median(cpu["per_window"]), median(cpu["timeline"])))
        result["methods"] = {m: {"wall_s": median(seconds[m]), "cpu_s": median(cpu[m])} for m in seconds}
    if kind == "streaming":
        for entry in result["results"].values():
            entry.setdefault("round_ratios", list(map(ratio, entry["streamed"]["runs"], entry["map-style"]["runs"])))
    if kind == "precision" and "accuracy_bf16" in result["models"].get("trained", {}):  # the first run's name
        result["models"]["trained"].setdefault("accuracy_low", result["models"]["trained"]["accuracy_bf16"])
    if kind == "reference":
        base, paired = result["runs"]["reference_fp32"], result["median_of_round_ratios"]
        # each round's own speed-up: both sides at that round's load
        result.setdefault(
            "round_ratios",
            {
                f"{n}_{mode}_speedup": list(map(ratio, base[f"{mode}_s"], run[f"{mode}_s"]))
                for n, run in result["runs"].items()
                for mode in ("inference", "train")
            },
        )
        for system, times in result["times"].items():
            times["max_abs_logit_diff"] = result["max_abs_logit_diff"][system]
            for mode in ("inference", "train"):
                times[f"{mode}_speedup"] = ratio(result["times"]["reference_fp32"][f"{mode}_s"], times[f"{mode}_s"])
                times[f"{mode}_round_speedup"] = paired.get(f"{system}_{mode}_speedup", times[f"{mode}_speedup"])
    # the README's rows: the defaults as `make train` runs them (not the data-path variants)
    settings = result.get("settings", {})
    default = not settings.get("frame_archives") and settings.get("augment_on_device") is None
    if kind == "training" and not settings.get("quick") and default:  # the metric: accuracy, or mAP
        metric = next((k for k in ("eval_accuracy", "eval_map") if k in result["metrics"]), None)
        result["run"] = {
            "metric": metric,
            "value": result["metrics"].get(metric),
            "wall_s": result["wall_s"],
            "cpu_s": result["cpu_s"],
            "script_args": " ".join(result["settings"]["script_args"]),
            "loadavg": result["settings"]["loadavg_1min_before"],
        }
    if kind == "data_path":
        for size, video in result["videos"].items():
            methods = video["methods"]
            result["ratios"].setdefault(
                f"training_{size}_torchcodec_sampled_over_pyav_whole_video",
                ratio(methods["torchcodec_sampled"]["clips_per_s"], methods["pyav_whole_video"]["clips_per_s"]),
            )
        for key, preparation in result["preparation"].items():
            size, copy = key.rsplit("_", 1)
            preparation.update(
                size=size,
                storage=copy,
                agreement=result["prepared_agreement"][key],
                prepared_size=preparation.get("prepared_size")
                or "x".join(map(str, result["videos"][size]["prepared_size"])),
                mb_before=preparation["bytes_before"] / result["settings"]["num_videos"] / 1e6,
                mb_after=preparation["bytes_after"] / result["settings"]["num_videos"] / 1e6,
            )
    return result


def load(folder=RESULTS) -> dict:
    return {
        path.stem: upgrade(path.stem, json.loads(path.read_text())) for path in sorted(Path(folder).glob("*.json"))
    }


def fmt(value, spec: str | None = None) -> str:
    """`value` formatted with `spec`; by default floats with 2 decimals and integers as they are."""
    if value is None:
        return "n/a"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, spec) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec or (".2f" if isinstance(value, float) else "d"))
    return str(value)


def apply(value, steps: list[str]) -> str:
    """The filters of `steps` on `value`, then the last step that is no filter as its format spec."""
    spec = None
    for step in steps:
        if step in FILTERS:
            value = None if value is None else FILTERS[step](value)
        elif step:
            spec = step
    return fmt(value, spec)


def lookup(results: dict, reference: str):
    """`file:path.to.value` -> that value, or a KeyError that names the file and path."""
    name, _, path = reference.strip().partition(":")
    if name not in results:
        raise KeyError(f"no {name}.json in the results")
    value = results[name]
    for part in filter(None, path.split(".")):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, ValueError) as error:
            raise KeyError(f"{name}.json has no {path} (failed at {part!r})") from error
    return value


def items(value, parts: list[str], keys: list):
    """`(keys, item)` for every item under `parts`, `*` iterating a dict or a list."""
    if not parts:
        yield keys, value
    elif parts[0] == "*":
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            yield from items(item, parts[1:], [*keys, key])
    elif isinstance(value, list) or parts[0] in value or not keys:  # under a `*`, items without the key are left out
        yield from items(value[int(parts[0])] if isinstance(value, list) else value[parts[0]], parts[1:], keys)


class Cell:
    """A row field: `{field:filter;spec}` formats it as the placeholders do; a missing one reads n/a."""

    def __init__(self, value):
        self.value = value

    def __getitem__(self, key):
        missing = self.value is None or (key not in self.value if isinstance(self.value, dict) else False)
        return Cell(None if missing else self.value[int(key) if isinstance(self.value, list) else key])

    def __format__(self, spec):
        return apply(self.value, spec.split(";"))


def rows(results: dict, reference: str, template: str) -> str:
    """A row per item; `file:path` starts in that file, `*.path` iterates the files themselves."""
    name, _, path = reference.partition(":") if ":" in reference else ("", "", reference)
    found = []
    for keys, item in items(lookup(results, name) if name else results, list(filter(None, path.split("."))), []):
        fields = {"value": item, "keys": keys, "key": (keys or [""])[-1], **(item if isinstance(item, dict) else {})}
        found.append(
            template.format_map(collections.defaultdict(lambda: Cell(None), {k: Cell(v) for k, v in fields.items()}))
        )
    return "\n".join(found)


def render(results: dict, template: str) -> str:
    def value(match):
        reference, *steps = [part.strip() for part in match.group(1).split("|")]
        sides = [lookup(results, side) for side in reference.split(" / ")]
        return apply(ratio(*sides) if len(sides) == 2 else sides[0], steps)

    template = re.sub(r"<!-- template:.*?-->\n", "", template, flags=re.DOTALL)  # the syntax notes
    template = re.sub(
        r"^\{\{ for (\S+) \}\}(.*)$", lambda m: rows(results, m.group(1), m.group(2)), template, flags=re.MULTILINE
    )
    return re.sub(r"\{\{(.*?)\}\}", value, template)


def readme_with_summary(text: str, results: dict) -> str:
    """README.md with the summary table between the markers; unchanged without them."""
    if BEGIN not in text or END not in text:
        return text
    head, rest = text.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{render(results, SUMMARY.read_text())}{END}{rest.split(END, 1)[1]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed page differs; write nothing")
    args = parser.parse_args(argv)
    results = load()
    pages = {
        PAGE: render(results, TEMPLATE.read_text()),
        **({README: readme_with_summary(README.read_text(), results)} if README.is_file() else {}),
    }
    stale = [path for path, text in pages.items() if not path.is_file() or path.read_text() != text]
    for path in stale:
        if args.check:
            print(f"{path.relative_to(ROOT)} is not what the results give: run `make benchmark-docs`", file=sys.stderr)
        else:
            path.write_text(pages[path])
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
