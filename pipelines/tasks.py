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
    # classification | token_classification | seq2seq (the latter two for later methods)
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

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


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


class UnknownTaskError(ValueError):
    pass


def get_task(name: str, label_names: list[str] | None = None) -> TaskSpec:
    """Look a task up; `custom` builds a spec from the recipe's label names."""
    if name == "custom":
        if not label_names or len(label_names) < 2:
            raise UnknownTaskError(
                "task 'custom' needs data.label_names with at least two labels "
                "(in index order), plus data.train_file / dev_file / test_file"
            )
        return TaskSpec(name="custom", label_names=tuple(label_names))
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}, custom")
    spec = TASKS[name]
    if label_names and tuple(label_names) != spec.label_names:
        raise UnknownTaskError(
            f"task {name!r} has labels {list(spec.label_names)}; recipe gave {label_names}"
        )
    return spec
