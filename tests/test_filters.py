"""Each filter's rule on hand-made runs with embeddings chosen by the test (no models); composition."""

from __future__ import annotations

import numpy as np
import pytest

from sgid.dataset import scan
from sgid.errors import SgidError
from sgid.filters import FILTERS, FilterInput, FilterOptions, filter_run, run_chain
from sgid.filters.best_of_k import BestOfKFilter
from sgid.filters.clip import LabelFilter, OriginalFilter, PromptFilter, ThresholdFilter
from sgid.filters.confidence import ConfidenceFilter
from sgid.filters.realfake import RealFakeFilter, out_of_fold_real_probability
from sgid.rundir import read_run_dir
from test_filters_support import FakeImages, FakeModels, FakeTexts, at_cosine, make_run, read_jsonl, unit


def data_of(run_path, real: bool = False) -> FilterInput:  # type: ignore[no-untyped-def]
    run = read_run_dir(run_path)
    sources = scan(run.source_dir).sources if real else ()
    return FilterInput(run.generated, run.classes, sources)


def everything(data: FilterInput) -> np.ndarray:
    return np.ones(len(data), dtype=bool)


def test_every_documented_filter_is_registered() -> None:
    expected = {"label", "prompt", "original", "threshold", "best_of_k", "realfake", "confidence", "human"}
    assert set(FILTERS.names()) == expected
    with pytest.raises(SgidError, match="unknown filter 'nope'; choose from"):
        FILTERS.get("nope")


# -- label (paper appendix B (1)) ----------------------------------------------------------------------
def test_label_filter_rejects_an_image_that_clip_puts_in_another_class(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path, {"cat": 2, "golden_retriever": 2}, k=1)
    images = FakeImages(
        {
            "cat/0_sgid_0.png": unit(1, 0.1),
            "cat/1_sgid_0.png": unit(0.2, 1),  # looks like a golden retriever
            "golden_retriever/0_sgid_0.png": unit(0.1, 1),
            "golden_retriever/1_sgid_0.png": unit(0, 1),
        }
    )
    prompts: dict[str, np.ndarray] = {
        "a photo of a cat": unit(1),
        "a photo of a golden retriever": unit(0, 1),
    }
    data = data_of(run)
    label = LabelFilter(images, FakeTexts(prompts.__getitem__))
    result = label.apply(data, everything(data))
    assert result.verdict.reject.tolist() == [False, True, False, False]
    assert result.scores.extra["label_predicted"] == [
        "cat",
        "golden_retriever",
        "golden_retriever",
        "golden_retriever",
    ]
    assert result.scores.values[1] < 0 <= result.scores.values[0]
    assert result.verdict.reasons[1].startswith("label: CLIP zero-shot predicts 'golden_retriever', not 'cat'")


def test_label_template_must_name_the_label() -> None:
    with pytest.raises(SgidError, match="must contain"):
        LabelFilter.check_options(FilterOptions(label_template="a photo"))


# -- prompt and original (paper appendix B (2), (3)): per-label mean -------------------------------------
COSINES = {
    "cat/0_sgid_0.png": 0.25,
    "cat/0_sgid_1.png": 0.5,
    "cat/1_sgid_0.png": 0.75,
    "cat/1_sgid_1.png": 0.5,
    "dog/0_sgid_0.png": 0.875,
    "dog/0_sgid_1.png": 0.125,
    "dog/1_sgid_0.png": 0.5,
    "dog/1_sgid_1.png": 0.5,
}
# means: cat 0.5, dog 0.5 -> below: cat/0_sgid_0 and dog/0_sgid_1 (0.5 itself is not below)
BELOW_MEAN = [True, False, False, False, False, True, False, False]


def test_prompt_filter_rejects_exactly_the_images_below_their_labels_mean(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path, {"cat": 2, "dog": 2})
    images = FakeImages({name: at_cosine(s) for name, s in COSINES.items()})
    data = data_of(run)
    result = PromptFilter(images, FakeTexts(lambda text: unit(1))).apply(data, everything(data))
    np.testing.assert_allclose(result.scores.values, list(COSINES.values()))
    assert result.verdict.reject.tolist() == BELOW_MEAN
    assert result.verdict.summary["label_means"] == pytest.approx({"cat": 0.5, "dog": 0.5})
    assert result.verdict.reasons[0] == "prompt: image-prompt similarity 0.2500 < cat mean 0.5000"


def test_prompt_filter_keeps_images_without_a_prompt_unscored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path, {"cat": 2}, prompt=lambda label, i, j: None if (i, j) == (0, 0) else f"p{i}{j}")
    images = FakeImages({n: at_cosine(s) for n, s in COSINES.items() if n.startswith("cat")})
    data = data_of(run)
    result = PromptFilter(images, FakeTexts(lambda text: unit(1))).apply(data, everything(data))
    assert np.isnan(result.scores.values[0]) and result.scores.missing == "no prompt"
    assert result.verdict.summary["label_means"]["cat"] == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    assert result.verdict.reject.tolist() == [False, True, False, True]


def test_original_filter_uses_similarity_to_the_source_and_the_labels_mean(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path, {"cat": 2, "dog": 2})
    sources = {f"{c}/{i}.png": unit(1) for c in ("cat", "dog") for i in (0, 1)}
    images = FakeImages({**sources, **{n: at_cosine(s) for n, s in COSINES.items()}})
    data = data_of(run)
    result = OriginalFilter(images).apply(data, everything(data))
    np.testing.assert_allclose(result.scores.values, list(COSINES.values()))
    assert result.verdict.reject.tolist() == BELOW_MEAN
    assert result.verdict.reasons[5] == "original: similarity to the source 0.1250 < dog mean 0.5000"


def test_threshold_filter_rejects_below_the_absolute_value(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path, {"cat": 2, "dog": 2})
    sources = {f"{c}/{i}.png": unit(1) for c in ("cat", "dog") for i in (0, 1)}
    images = FakeImages({**sources, **{n: at_cosine(s) for n, s in COSINES.items()}})
    data = data_of(run)
    result = ThresholdFilter(images, 0.6).apply(data, everything(data))
    assert result.verdict.reject.tolist() == [s < 0.6 for s in COSINES.values()]
    assert result.verdict.reasons[0] == "threshold: similarity to the source 0.2500 < 0.6"


def test_threshold_filter_decides_at_its_threshold(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path, {"cat": 1}, k=2)
    images = FakeImages(
        {"cat/0.png": unit(1), "cat/0_sgid_0.png": at_cosine(0.6 - 1e-6)}, default=at_cosine(0.6 + 1e-6)
    )
    data = data_of(run)
    assert ThresholdFilter(images, 0.6).apply(data, everything(data)).verdict.reject.tolist() == [True, False]


def test_realfake_decides_at_its_threshold(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sgid.filters.base import Scores

    data = data_of(make_run(tmp_path, {"cat": 2}, k=2))
    scores = Scores(np.array([0.3 - 1e-9, 0.3, 0.3 + 1e-9, np.nan]))
    verdict = RealFakeFilter(FakeImages({}), threshold=0.3).decide(data, scores, everything(data))
    assert verdict.reject.tolist() == [True, False, False, False] and verdict.summary == {"threshold": 0.3}


@pytest.mark.parametrize(
    "options, message",
    [
        (FilterOptions(), "needs --threshold"),
        (FilterOptions(threshold=1.5), "not a cosine similarity"),
    ],
)
def test_threshold_needs_a_valid_value(options: FilterOptions, message: str) -> None:
    with pytest.raises(SgidError, match=message):
        ThresholdFilter.check_options(options)


# -- best_of_k (000) -----------------------------------------------------------------------------------------
def test_best_of_k_keeps_the_most_similar_augmentation_of_each_source(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path, {"cat": 2}, k=3)
    cosines = {
        "cat/0_sgid_0.png": 0.5,
        "cat/0_sgid_1.png": 0.9,
        "cat/0_sgid_2.png": 0.7,
        "cat/1_sgid_0.png": 0.2,
        "cat/1_sgid_1.png": 0.1,
        "cat/1_sgid_2.png": 0.3,
    }
    images = FakeImages({"cat/0.png": unit(1), "cat/1.png": unit(1), **{n: at_cosine(s) for n, s in cosines.items()}})
    data = data_of(run)
    best = BestOfKFilter(OriginalFilter(images), keep=1).apply(data, everything(data))
    assert best.verdict.reject.tolist() == [True, False, True, True, True, False]
    assert best.verdict.reasons[0] == (
        "best_of_k: rank 3 of 3 augmentations of cat/0.png by original score 0.5000 (keeping 1)"
    )
    two = BestOfKFilter(OriginalFilter(images), keep=2).apply(data, everything(data))
    assert two.verdict.reject.tolist() == [True, False, False, False, True, False]


@pytest.mark.parametrize(
    "options, message",
    [
        (FilterOptions(keep=0), "keep at least 1"),
        (FilterOptions(rank_by="best_of_k"), "unknown --rank-by"),
        (
            FilterOptions(rank_by="threshold"),
            "needs --threshold",
        ),  # the ranker's own settings are checked too
    ],
)
def test_best_of_k_options_are_checked(options: FilterOptions, message: str) -> None:
    with pytest.raises(SgidError, match=message):
        BestOfKFilter.check_options(options)


def test_best_of_k_reads_what_its_ranker_reads() -> None:
    assert BestOfKFilter.needs(FilterOptions(rank_by="original")) == {"sources"}
    assert BestOfKFilter.needs(FilterOptions(rank_by="realfake")) == {"real"}
    assert BestOfKFilter.needs(FilterOptions(rank_by="prompt")) == frozenset()


# -- realfake (000): out-of-fold -------------------------------------------------------------------------
class RecordingClassifier:
    """Remembers which rows (feature = row id) it was trained on and which it scored."""

    log: list[tuple[set[int], set[int]]] = []

    def fit(self, x: np.ndarray, y: np.ndarray) -> RecordingClassifier:
        self.trained = {int(v) for v in x[:, 0]}
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        RecordingClassifier.log.append((self.trained, {int(v) for v in x[:, 0]}))
        return np.tile([0.5, 0.5], (len(x), 1))


def test_out_of_fold_scores_never_come_from_a_model_trained_on_the_image_or_its_group() -> None:
    RecordingClassifier.log = []
    n_real, per_source = 10, 3
    groups = [f"s{i}" for i in range(n_real)] + [f"s{i}" for i in range(n_real) for _ in range(per_source)]
    is_real = np.arange(len(groups)) < n_real
    trainable = np.ones(len(groups), dtype=bool)
    trainable[[12, 20, 33]] = False  # rejected by an earlier filter: scored, never trained on
    features = np.arange(len(groups), dtype=float)[:, None]  # the feature is the row id
    result = out_of_fold_real_probability(
        features, is_real, groups, trainable, folds=4, make_classifier=RecordingClassifier
    )
    assert len(RecordingClassifier.log) == 4
    scored = [row for _, tested in RecordingClassifier.log for row in tested]
    assert sorted(scored) == list(range(len(groups)))  # every row scored exactly once
    for (trained, tested), train_indices in zip(RecordingClassifier.log, result.trained_on, strict=True):
        assert trained == set(train_indices.tolist())
        assert not trained & tested
        assert not {groups[i] for i in trained} & {groups[i] for i in tested}  # no source or sibling either
        assert not trained & {12, 20, 33}
    assert not np.isnan(result.probability).any()


def test_realfake_keeps_generated_images_that_look_real_and_rejects_the_rest(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path, {"cat": 12, "dog": 12}, k=2)
    rng = np.random.default_rng(0)
    real_like = lambda: rng.normal(0.0, 1.0, 6)  # noqa: E731
    vectors = {f"{c}/{i}.png": real_like() for c in ("cat", "dog") for i in range(12)}
    for c in ("cat", "dog"):
        for i in range(12):
            vectors[f"{c}/{i}_sgid_0.png"] = real_like()  # drawn like the real images
            vectors[f"{c}/{i}_sgid_1.png"] = real_like() + np.array([8.0, 0, 0, 0, 0, 0])  # obviously off
    data = data_of(run, real=True)
    result = RealFakeFilter(FakeImages(vectors), folds=4).apply(data, everything(data))
    off = np.array([e.k == 1 for e in data.generated])
    assert result.verdict.reject[off].all()  # every obviously generated image goes
    assert (~result.verdict.reject[~off]).sum() >= 8  # what is kept looks real
    assert result.scores.values[~off].mean() > 0.4 > 0.1 > result.scores.values[off].mean()
    assert result.scores.summary["folds"] == 4 and result.scores.summary["real_images"] == 24
    assert result.verdict.reasons[1].startswith("realfake: out-of-fold P(real) ")


def test_realfake_needs_enough_sources_to_cross_validate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path, {"cat": 1}, k=2)
    data = data_of(run, real=True)
    with pytest.raises(SgidError, match="at least 2 sources"):
        RealFakeFilter(FakeImages({}, default=unit(1))).apply(data, everything(data))


@pytest.mark.parametrize(
    "options, message",
    [
        (FilterOptions(folds=1), "at least 2 folds"),
        (FilterOptions(real_threshold=2.0), "not a probability"),
    ],
)
def test_realfake_options_are_checked(options: FilterOptions, message: str) -> None:
    with pytest.raises(SgidError, match=message):
        RealFakeFilter.check_options(options)


# -- confidence ------------------------------------------------------------------------------------------
def fake_classifier(probs_by_image: dict[int, list[float]]):  # type: ignore[no-untyped-def]
    """A predict_proba over PIL images that answers by the image's first pixel (unique per test image)."""

    def predict(images):  # type: ignore[no-untyped-def]
        return np.array([probs_by_image[hash(image.getpixel((0, 0)))] for image in images])

    return predict


def test_confidence_rejects_images_confidently_assigned_to_another_class(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path, {"cat": 2, "dog": 1}, k=1)
    data = data_of(run)
    from PIL import Image

    pixels = [hash(Image.open(e.path).getpixel((0, 0))) for e in data.generated]
    answers = {pixels[0]: [0.9, 0.1], pixels[1]: [0.3, 0.7], pixels[2]: [0.55, 0.45]}
    confidence = ConfidenceFilter(fake_classifier(answers), ["cat", "dog"], threshold=0.6)
    result = confidence.apply(data, everything(data))
    assert result.verdict.reject.tolist() == [False, True, False]  # the dog image is only 0.55 "cat"
    np.testing.assert_allclose(result.scores.values, [0.9, 0.3, 0.45])
    assert result.scores.extra["confidence_predicted"] == ["cat", "dog", "cat"]
    assert "says 'dog' (p=0.7000 >= 0.6), not 'cat'" in result.verdict.reasons[1]
    # at the threshold itself the image goes; just below it stays
    answers = {pixels[0]: [0.4, 0.6], pixels[1]: [0.4 + 1e-9, 0.6 - 1e-9], pixels[2]: [0.1, 0.9]}
    at_threshold = ConfidenceFilter(fake_classifier(answers), ["cat", "dog"], threshold=0.6)
    assert at_threshold.apply(data, everything(data)).verdict.reject.tolist() == [True, False, False]


def test_confidence_refuses_a_classifier_without_the_runs_classes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path, {"cat": 1, "dog": 1}, k=1)
    data = data_of(run)
    with pytest.raises(SgidError, match="without dog"):
        ConfidenceFilter(lambda images: np.ones((len(images), 1)), ["cat"]).apply(data, everything(data))


def test_confidence_needs_a_classifier_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SgidError, match="needs --classifier"):
        ConfidenceFilter.check_options(FilterOptions())
    with pytest.raises(SgidError, match="not a folder"):
        ConfidenceFilter.check_options(FilterOptions(classifier=tmp_path / "missing"))


def test_confidence_with_a_classifier_saved_by_sgid_evaluate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    checkpoint = pytest.importorskip("sgid.evaluate.checkpoint")
    from sgid.evaluate.backbones import build_backbone
    from sgid.features import ClipChoice
    from sgid.filters.api import LoadedFilterModels

    model = build_backbone("small_cnn", 2, image_size=32, pretrained=False, arch={"width": 8})
    checkpoint.save_classifier(
        model,
        tmp_path / "clf",
        backbone="small_cnn",
        classes=["cat", "dog"],
        image_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    models = LoadedFilterModels(ClipChoice(None, False, "cpu", None))
    confidence = ConfidenceFilter.create(FilterOptions(classifier=tmp_path / "clf"), models)
    data = data_of(make_run(tmp_path / "run", {"cat": 2, "dog": 2}, k=1))
    result = confidence.apply(data, everything(data))
    probabilities = np.array(result.scores.values)
    assert probabilities.shape == (4,) and ((0 <= probabilities) & (probabilities <= 1)).all()
    assert confidence.classes == ["cat", "dog"]


# -- composition -----------------------------------------------------------------------------------------
def composition_case(tmp_path):  # type: ignore[no-untyped-def]
    """Prompt similarities and source similarities chosen so that the order of the filters matters."""
    run = make_run(tmp_path, {"cat": 4}, k=1, prompt=lambda label, i, j: f"prompt {i}")
    prompt_cos = [0.9, 0.8, 0.1, 0.3]  # mean 0.525: rejects 2, 3; over {2, 3}: mean 0.2, rejects 2
    source_cos = [0.2, 0.5, 0.9, 0.9]  # mean 0.625: rejects 0, 1; over {0, 1}: mean 0.35, rejects 0
    vectors = {f"cat/{i}.png": unit(0, 0, 1) for i in range(4)}
    prompts = {}
    for i in range(4):
        # image = a*e0 + b*e2 + c*e1, with e0 the prompt direction and e2 the source direction
        a, b = prompt_cos[i], source_cos[i]
        vectors[f"cat/{i}_sgid_0.png"] = np.array([a, np.sqrt(1 - a * a - b * b), b, 0.0])
        prompts[f"prompt {i}"] = unit(1)
    return run, FakeModels(FakeImages(vectors), FakeTexts(prompts.__getitem__))


def test_later_filters_decide_only_about_kept_images_and_use_their_statistics(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run, models = composition_case(tmp_path)
    data = data_of(run)
    chain = run_chain([PromptFilter(models.images, models.texts), OriginalFilter(models.images)], data)
    prompt, original = chain.results
    assert prompt.verdict.reject.tolist() == [False, False, True, True]
    assert original.judged.tolist() == [True, True, False, False]
    assert original.verdict.summary["label_means"]["cat"] == pytest.approx(0.35)  # over the kept images only
    assert chain.kept.tolist() == [False, True, False, False]
    assert chain.rejected_by.tolist() == [1, -1, 0, 0]
    rows = chain.decision_rows()
    assert rows[2]["original_decision"] is None and rows[2]["original_score"] == pytest.approx(0.9)
    assert rows[2]["reason"].startswith("prompt: ") and rows[0]["reason"].startswith("original: ")
    assert rows[1]["reason"] == "passed prompt, original"


def test_a_chain_equals_filtering_the_filtered_output_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run, models = composition_case(tmp_path)
    filter_run(run, tmp_path / "both", "prompt,original", loaded=models, quiet=True)
    filter_run(run, tmp_path / "first", "prompt", loaded=models, quiet=True)
    filter_run(tmp_path / "first", tmp_path / "second", "original", loaded=models, quiet=True)
    kept_both = [r["file_name"] for r in read_jsonl(tmp_path / "both" / "metadata.jsonl")]
    kept_twice = [r["file_name"] for r in read_jsonl(tmp_path / "second" / "metadata.jsonl")]
    assert kept_both == kept_twice == ["cat/1_sgid_0.png"]
    filter_run(run, tmp_path / "reversed", "original,prompt", loaded=models, quiet=True)
    kept_reversed = [r["file_name"] for r in read_jsonl(tmp_path / "reversed" / "metadata.jsonl")]
    assert kept_reversed == ["cat/3_sgid_0.png"]  # the order matters
