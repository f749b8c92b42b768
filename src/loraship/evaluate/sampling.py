"""The gate's per-question measure: the share of k sampled answers that are right.

One greedy answer per question is a coin: a fact the model gives with probability 0.55
counts 100 and at 0.45 counts 0, so a paired difference over 30-50 questions carries about
12 points of noise. Asking each question k times at the temperature the Modelfile serves
(what a person chatting with the tag gets), each answer with its own seed (seed + 1 ...
seed + k, so a run is reproducible), gives every question a share of right answers instead:
a score in points with the same meaning as accuracy (the expected accuracy of one served
answer), but far less noise. The greedy answer is still asked and reported beside it.

A sample is scored like a greedy answer (scoring.accuracy: the share of the question's facts
it contains, or token F1 without facts); the question's sampled score is the mean over its
samples, so for a one-fact question it is exactly the share of right answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from loraship.config import CompareConfig
from loraship.evaluate import scoring

SAMPLED, GREEDY = "sampled", "greedy"
SCORE_KEY = {SAMPLED: "sampled", GREEDY: "accuracy"}  # per-answer score each measure reads


@dataclass(frozen=True)
class Measure:
    name: str  # SAMPLED or GREEDY
    samples: int  # k; 0 for greedy
    temperature: float | None  # what samples are drawn at; None for greedy
    seeds: tuple[int, ...]
    reason: str

    @property
    def key(self) -> str:
        return SCORE_KEY[self.name]

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "seeds": list(self.seeds)}

    def describe(self) -> str:
        if self.name == GREEDY:
            return "greedy accuracy (one answer at temperature 0 per question)"
        return (f"sampled accuracy (share of {self.samples} answers per question at temperature "
                f"{self.temperature:g}, seeds {self.seeds[0]}-{self.seeds[-1]}, that are right)")


def choose(cfg: CompareConfig, served_temperature: float | None) -> Measure:
    """Sampled at compare.sample_temperature, else at the served temperature; greedy when
    compare.samples is 0 or that temperature is 0 (every sample would be the greedy answer)."""
    temperature = cfg.sample_temperature if cfg.sample_temperature is not None else served_temperature
    if cfg.samples <= 0:
        return Measure(GREEDY, 0, None, (), "compare.samples is 0")
    if temperature is None:
        return Measure(GREEDY, 0, None, (), "no served temperature given and no compare.sample_temperature")
    if temperature <= 0:
        return Measure(GREEDY, 0, None, (), f"the served temperature is {temperature:g}: every sample would be "
                       "the greedy answer")
    source = "compare.sample_temperature" if cfg.sample_temperature is not None else "the served temperature"
    seeds = tuple(cfg.seed + 1 + i for i in range(cfg.samples))
    return Measure(SAMPLED, cfg.samples, float(temperature), seeds,
                   f"compare.samples {cfg.samples} at {source} {temperature:g}")


def options(greedy_options: dict[str, Any], measure: Measure) -> dict[str, Any]:
    """A sample's options: the greedy ones at the measure's temperature (seed set per sample)."""
    return {**greedy_options, "temperature": measure.temperature}


def score(texts: list[str], q: scoring.QuestionLike) -> dict[str, Any]:
    """{"sampled": mean accuracy over the samples (points), "sampled_right": samples scoring 100}."""
    points = [scoring.accuracy(t, q.reference, q.facts)[0] for t in texts]
    return {"sampled": round(sum(points) / len(points), 2), "sampled_right": sum(p >= 100.0 for p in points)}
