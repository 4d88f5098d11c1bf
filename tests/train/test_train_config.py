"""Training configs: every documented key read, every mistake reported with file, table and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distill_eval.config import DatasetSpec
from distill_eval.errors import ConfigError
from distill_eval.train import load_train_config
from distill_eval.train.config import TeacherTraining, TrainConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "distill_eval" / "train" / "examples" / "digits.toml"

FULL = """
[data]
train = { source = "sklearn:digits", split = "train" }
val = { path = "data/val.npz" }

[teacher]
path = "teacher.pt"

[student]
factory = "mystudent:build"
kwargs = { hidden = [16, 8] }
weights = "init.pt"

[distill]
temperature = 2.5
alpha = 0.75
epochs = 12
batch_size = 32
lr = 0.005
weight_decay = 0.0001
seed = 7
control = true
offline = true
filter_teacher_errors = "relabel"
schedule = "cosine"
patience = 3
device = "cuda:1"
precision = "auto"
teacher_batch_size = 512
cache_dir = "cache"

[output]
dir = "runs/digits"
format = "torchscript"
"""

MINIMAL = """
[data]
train = { source = "sklearn:digits", split = "train" }
val = { source = "sklearn:digits", split = "test" }

[teacher]
factory = "distill_eval.train.zoo:digits_teacher"

[student]
factory = "distill_eval.train.zoo:digits_student"

[distill]
epochs = 3

[output]
dir = "out"
"""


def load(tmp_path: Path, text: str) -> TrainConfig:
    path = tmp_path / "train.toml"
    path.write_text(text)
    return load_train_config(path)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "train.toml")), message  # every message names the file
    return message


def test_every_key_is_read(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)
    assert config.train == DatasetSpec(name="train", source="sklearn:digits", split="train")
    assert config.val.path == tmp_path / "data" / "val.npz"  # relative to the config file
    assert config.teacher.path == tmp_path / "teacher.pt" and config.teacher.factory is None
    assert config.student.factory == "mystudent:build"
    assert dict(config.student.kwargs) == {"hidden": [16, 8]}
    assert config.student.weights == tmp_path / "init.pt"
    d = config.distill
    assert (d.temperature, d.alpha, d.epochs, d.batch_size, d.lr, d.weight_decay, d.seed) == (
        2.5,
        0.75,
        12,
        32,
        0.005,
        0.0001,
        7,
    )
    assert d.control is True and d.offline is True
    assert d.filter_teacher_errors == "relabel" and d.schedule == "cosine" and d.patience == 3
    assert d.device == "cuda:1" and d.precision == "auto" and d.teacher_batch_size == 512
    assert d.cache_dir == tmp_path / "cache"
    assert config.output.dir == tmp_path / "runs" / "digits"
    assert config.output.format == "torchscript" and config.output.suffix == ".pt"
    assert config.augment.noise_std == 0.0 and not config.augment.enabled
    assert config.file == tmp_path / "train.toml"
    assert config.document["distill"]["alpha"] == 0.75


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path / "..")
    config = load(tmp_path, MINIMAL)
    d = config.distill
    assert (d.temperature, d.alpha, d.batch_size, d.lr, d.weight_decay, d.seed) == (4.0, 0.9, 64, 1e-3, 0.0, 0)
    assert (d.control, d.offline, d.filter_teacher_errors, d.schedule, d.patience) == (
        False,
        False,
        "none",
        "constant",
        0,
    )
    assert (d.device, d.precision, d.teacher_batch_size) == ("auto", "fp32", 256)
    assert d.cache_dir == Path.cwd() / ".distill_cache"  # the plugin's default, where the command runs
    assert config.output.format == "export" and config.output.suffix == ".pt2"
    assert config.val.split == "test"


def test_with_output_dir(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL).with_output_dir(tmp_path / "elsewhere")
    assert config.output.dir == tmp_path / "elsewhere" and config.output.format == "export"


def test_augment_table(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + "\n[augment]\nnoise_std = 0.1\n")
    assert config.augment.noise_std == 0.1 and config.augment.enabled


def test_the_example_config_loads() -> None:
    config = load_train_config(EXAMPLE)
    assert config.teacher.weights is not None and config.teacher.weights.is_file()
    assert config.distill.control and config.distill.offline


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "[distill]\nepochs = 3",
            "[distill]\nepochs = 3\ntemprature = 4.0",
            "[distill]: unknown key 'temprature' (did you mean 'temperature'?)",
        ),
        ("[distill]\nepochs = 3", "[distill]\nepoch = 3", "[distill]: unknown key 'epoch' (did you mean 'epochs'?)"),
        ("[distill]", "[distil]", ": unknown key 'distil' (did you mean 'distill'?)"),
        ('dir = "out"', 'dirr = "out"', "[output]: unknown key 'dirr' (did you mean 'dir'?)"),
        ("train = {", "trian = {", "[data]: unknown key 'trian' (did you mean 'train'?)"),
        ("train = { source", "train = { sorce", "[data] train: unknown key 'sorce' (did you mean 'source'?)"),
        ("[teacher]\nfactory", "[teacher]\nfactroy", "[teacher]: unknown key 'factroy' (did you mean 'factory'?)"),
        ("[student]\n", "[student]\nkwarg = {}\n", "[student]: unknown key 'kwarg' (did you mean 'kwargs'?)"),
        ("[output]", "[augment]\nnoise = 0.1\n[output]", "[augment]: unknown key 'noise' (did you mean 'noise_std'?)"),
    ],
)
def test_unknown_keys_name_the_file_the_table_and_the_nearest_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in MINIMAL
    assert expected in error(tmp_path, MINIMAL.replace(old, new, 1))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("epochs", '"40"', "'epochs' must be an integer >= 1, got a string ('40')"),
        ("epochs", "0", "'epochs' must be an integer >= 1, got an integer (0)"),
        ("epochs", "2.5", "'epochs' must be an integer >= 1, got a number (2.5)"),
        ("batch_size", "true", "'batch_size' must be an integer >= 1, got a boolean (true)"),
        ("lr", '"fast"', "'lr' must be a number > 0, got a string ('fast')"),
        ("lr", "0", "'lr' must be a number > 0, got an integer (0)"),
        ("seed", "-1", "'seed' must be an integer >= 0"),
        ("control", "1", "'control' must be true or false, got an integer (1)"),
        ("offline", '"yes"', "'offline' must be true or false, got a string ('yes')"),
        ("patience", "-2", "'patience' must be an integer >= 0"),
        ("weight_decay", "-0.1", "'weight_decay' must be a number >= 0"),
        ("schedule", '"linear"', "'schedule' must be one of 'constant' or 'cosine', got 'linear'"),
        (
            "precision",
            '"bf15"',
            "'precision' must be one of 'auto', 'bf16' or 'fp32', got 'bf15' (did you mean 'bf16'?)",
        ),
        ("device", '"gpu"', "'device' must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'"),
        ("cache_dir", "3", "'cache_dir' must be a string, got an integer (3)"),
    ],
)
def test_wrong_types_and_values(tmp_path: Path, key: str, value: str, expected: str) -> None:
    line = f"{key} = {value}"
    message = error(tmp_path, MINIMAL.replace("epochs = 3", line if key == "epochs" else f"epochs = 3\n{line}"))
    assert "[distill]: " + expected in message


@pytest.mark.parametrize("alpha", ["1.5", "-0.1", "nan", '"0.5"'])
def test_alpha_must_be_in_zero_one(tmp_path: Path, alpha: str) -> None:
    message = error(tmp_path, MINIMAL.replace("epochs = 3", f"epochs = 3\nalpha = {alpha}"))
    assert "[distill]: 'alpha' must be a number in [0, 1]" in message


@pytest.mark.parametrize("temperature", ["0", "-1.0", "inf", "[4]"])
def test_temperature_must_be_positive(tmp_path: Path, temperature: str) -> None:
    message = error(tmp_path, MINIMAL.replace("epochs = 3", f"epochs = 3\ntemperature = {temperature}"))
    assert "[distill]: 'temperature' must be a number > 0" in message


@pytest.mark.parametrize(
    ("value", "hint"),
    [('"dropp"', " (did you mean 'drop'?)"), ('"relable"', " (did you mean 'relabel'?)"), ('"all"', ""), ("true", "")],
)
def test_filter_must_be_none_drop_or_relabel(tmp_path: Path, value: str, hint: str) -> None:
    message = error(tmp_path, MINIMAL.replace("epochs = 3", f"epochs = 3\nfilter_teacher_errors = {value}"))
    assert "[distill]: 'filter_teacher_errors' must be " in message
    if value.startswith('"'):
        assert f"one of 'drop', 'none' or 'relabel', got {value[1:-1]!r}{hint}" in message


def drop_table(text: str, table: str) -> str:
    """The config without ``[table]`` and its keys."""
    return re.sub(rf"\[{table}\]\n(?:[^\[\n][^\n]*\n|\n)*", "", text)


@pytest.mark.parametrize("table", ["data", "teacher", "student", "distill", "output"])
def test_missing_required_tables(tmp_path: Path, table: str) -> None:
    text = drop_table(MINIMAL, table)
    assert f"[{table}]" not in text
    assert f"missing required table [{table}]" in error(tmp_path, text)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("epochs = 3", "seed = 1", "[distill]: missing required key 'epochs'"),
        ('val = { source = "sklearn:digits", split = "test" }\n', "", "[data]: missing required key 'val'"),
        ('dir = "out"', 'format = "export"', "[output]: missing required key 'dir'"),
        ('dir = "out"', 'dir = ""', "[output]: 'dir' must be a non-empty path"),
        ('dir = "out"', 'dir = "out"\nformat = "onnx"', "[output]: 'format' must be one of 'export' or 'torchscript'"),
        ("[teacher]\nfactory", "[teacher]\ntrusted = true\n#", "[teacher]: set 'path' (a saved model) or 'factory'"),
        (
            '[student]\nfactory = "distill_eval.train.zoo:digits_student"',
            '[student]\npath = "s.pt2"',
            "[student]: set 'factory'",
        ),
        (
            "[student]\nfactory = ",
            '[student]\npath = "s.pt"\nfactory = ',
            "[student]: set either 'path' or 'factory', not both",
        ),
        (
            '"distill_eval.train.zoo:digits_teacher"',
            '"no_colon"',
            "[teacher]: 'factory' must look like 'package.module:callable'",
        ),
        ('split = "train"', 'split = "training"', "[data] train: 'split' must be one of 'all', 'test' or 'train'"),
        ("train = {", "train = 3\nx = {", "[data]: 'train' must be a table, got an integer (3)"),
        ("[data]", "augment = 0.1\n[data]", ": 'augment' must be a table, got a number (0.1)"),
        ("[output]", "[augment]\nnoise_std = -0.5\n[output]", "[augment]: 'noise_std' must be a number >= 0"),
    ],
)
def test_missing_keys_and_inconsistent_tables(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in MINIMAL
    assert expected in error(tmp_path, MINIMAL.replace(old, new, 1))


def test_offline_is_refused_with_augmentation(tmp_path: Path) -> None:
    text = MINIMAL.replace("epochs = 3", "epochs = 3\noffline = true") + "\n[augment]\nnoise_std = 0.1\n"
    message = error(tmp_path, text)
    assert "[distill]: 'offline = true' cannot be used with data augmentation ([augment] noise_std = 0.1)" in message
    assert "set offline = false" in message
    # Either alone is fine.
    assert load(tmp_path, MINIMAL.replace("epochs = 3", "epochs = 3\noffline = true")).distill.offline
    assert load(tmp_path, MINIMAL + "\n[augment]\nnoise_std = 0.1\n").augment.enabled


def test_toml_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    assert "not valid TOML" in error(tmp_path, MINIMAL + "\n[distill\n")
    with pytest.raises(ConfigError, match="file not found"):
        load_train_config(tmp_path / "nope.toml")


# -- a teacher trained here ([teacher] train = true) -------------------------------------

TRAINED = MINIMAL.replace(
    '[teacher]\nfactory = "distill_eval.train.zoo:digits_teacher"',
    '[teacher]\ntrain = true\nfactory = "distill_eval.train.zoo:digits_teacher"',
)
FROM_SCRATCH = EXAMPLE.with_name("digits_from_scratch.toml")


def test_a_trained_teacher_has_documented_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, TRAINED)
    assert config.teacher_training == TeacherTraining()
    assert (config.teacher_training.epochs, config.teacher_training.lr, config.teacher_training.batch_size) == (
        30,
        1e-3,
        64,
    )
    assert config.teacher_training.weight_decay == 0.0 and config.teacher_training.label_smoothing == 0.0
    assert config.teacher_training.seed is None  # the [distill] seed
    assert config.teacher.factory == "distill_eval.train.zoo:digits_teacher" and config.teacher.path is None
    # Without train = true nothing is trained.
    assert load(tmp_path, MINIMAL).teacher_training is None
    assert load(tmp_path, TRAINED.replace("train = true", "train = false")).teacher_training is None


def test_every_teacher_recipe_key_is_read(tmp_path: Path) -> None:
    recipe = "kwargs = { hidden = [16] }\nepochs = 5\nlr = 0.01\nbatch_size = 32\nweight_decay = 0.001\n"
    recipe += "label_smoothing = 0.1\nseed = 3\n"
    config = load(tmp_path, TRAINED.replace("train = true\n", "train = true\n" + recipe))
    assert config.teacher.kwargs == {"hidden": [16]}
    assert config.teacher_training == TeacherTraining(
        epochs=5, lr=0.01, batch_size=32, weight_decay=0.001, label_smoothing=0.1, seed=3
    )


def test_the_from_scratch_example_trains_its_teacher() -> None:
    config = load_train_config(FROM_SCRATCH)
    assert config.teacher_training is not None and config.teacher.weights is None
    assert config.teacher.factory == "distill_eval.train.zoo:digits_teacher"
    assert config.student.factory == "distill_eval.train.zoo:digits_student" and not config.student.kwargs


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('path = "t.pt2"', "[teacher]: 'train = true' trains the teacher from scratch, so 'path' cannot be set"),
        ('weights = "t.pt"', "[teacher]: 'train = true' trains the teacher from scratch, so 'weights' cannot be set"),
        ("epoch = 3", "[teacher]: unknown key 'epoch' (did you mean 'epochs'?)"),
        ("label_smothing = 0.1", "[teacher]: unknown key 'label_smothing' (did you mean 'label_smoothing'?)"),
        ("trusted = true", "[teacher]: unknown key 'trusted'"),
        ("epochs = 0", "[teacher]: 'epochs' must be an integer >= 1, got"),
        ("lr = 0", "[teacher]: 'lr' must be a number > 0, got"),
        ("batch_size = 1.5", "[teacher]: 'batch_size' must be an integer >= 1, got"),
        ("weight_decay = -1", "[teacher]: 'weight_decay' must be a number >= 0, got"),
        ("label_smoothing = 1.0", "[teacher]: 'label_smoothing' must be a number in [0, 1), got"),
        ("seed = -1", "[teacher]: 'seed' must be an integer >= 0, got"),
    ],
)
def test_trained_teacher_mistakes(tmp_path: Path, extra: str, expected: str) -> None:
    assert expected in error(tmp_path, TRAINED.replace("train = true\n", f"train = true\n{extra}\n"))


def test_trained_teacher_needs_a_factory_and_train_a_boolean(tmp_path: Path) -> None:
    no_factory = TRAINED.replace('factory = "distill_eval.train.zoo:digits_teacher"', "epochs = 3", 1)
    assert "[teacher]: 'train = true' needs 'factory'" in error(tmp_path, no_factory)
    assert "[teacher]: 'train' must be true or false, got" in error(
        tmp_path, TRAINED.replace("train = true", 'train = "yes"')
    )
    assert "[teacher]: set 'path' (a saved model) or 'factory'" in error(
        tmp_path,
        TRAINED.replace('factory = "distill_eval.train.zoo:digits_teacher"', "train = false", 1).replace(
            "train = true\n", ""
        ),
    )


@pytest.mark.parametrize("key", ["epochs = 3", "lr = 0.01", "label_smoothing = 0.1", "seed = 1"])
def test_recipe_keys_need_train_true(tmp_path: Path, key: str) -> None:
    name = key.split(" ")[0]
    message = error(tmp_path, MINIMAL.replace("[teacher]\n", f"[teacher]\n{key}\n"))
    assert f"[teacher]: '{name}' is a key of a teacher trained here; set 'train = true' or remove '{name}'" in message


# -- token data ----------------------------------------------------------------------

TOKENS = """
[data]
train = { source = "builtin:bytes", split = "train", seq_len = 64 }
val = { source = "builtin:bytes" }

[teacher]
factory = "distill_eval.train.zoo:bytes_teacher"

[student]
factory = "distill_eval.train.zoo:bytes_student"

[distill]
epochs = 3
divergence = "jsd"
beta = 0.25
accumulation_steps = 4

[output]
dir = "out"
"""


def test_a_token_source_makes_token_data(tmp_path: Path) -> None:
    config = load(tmp_path, TOKENS)
    assert config.tokens
    assert config.train == DatasetSpec(name="train", source="builtin:bytes", split="train", seq_len=64)
    assert config.val == DatasetSpec(name="val", source="builtin:bytes", split="test")  # seq_len: the corpus's default
    d = config.distill
    assert (d.divergence, d.beta, d.accumulation_steps) == ("jsd", 0.25, 4)
    assert not load(tmp_path, MINIMAL).tokens and load(tmp_path, MINIMAL).distill.accumulation_steps == 1


def test_token_files_and_jsonl_text_are_token_data(tmp_path: Path) -> None:
    text = TOKENS.replace(
        'train = { source = "builtin:bytes", split = "train", seq_len = 64 }\nval = { source = "builtin:bytes" }',
        'kind = "tokens"\ntrain = { path = "train.npz" }\nval = { path = "val.jsonl", tokenizer = "bytes" }',
    )
    config = load(tmp_path, text)
    assert config.tokens and config.train.path == tmp_path / "train.npz"
    assert config.val == DatasetSpec(name="val", path=tmp_path / "val.jsonl", tokenizer="bytes")
    # without kind: a .jsonl file is token data by itself
    assert load(tmp_path, text.replace('kind = "tokens"\n', "")).tokens


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'source = "builtin:bytes" }',
            'source = "builtin:byte" }',
            "[data] val: 'source' must be one of 'builtin:bytes'",
        ),
        ("seq_len = 64", "seq_len = 1", "[data] train: 'seq_len' must be an integer >= 2"),
        ('source = "builtin:bytes" }', 'path = "v.npz", split = "test" }', "[data] val: 'split' applies only to"),
        ('source = "builtin:bytes" }', 'source = "builtin:bytes", vocab_size = 9 }', "unknown key 'vocab_size'"),
        (
            'source = "builtin:bytes" }',
            'source = "sklearn:digits" }',
            "'val' reads 'sklearn:digits', which is not token",
        ),
        ("[data]", '[data]\nkind = "classification"', "[data]: 'train' reads the token source 'builtin:bytes'"),
        ("[data]", '[data]\nkind = "text"', "[data]: 'kind' must be one of 'classification' or 'tokens', got 'text'"),
        (
            '"jsd"',
            '"reverse-kl"',
            "'divergence' must be one of 'forward_kl', 'jsd' or 'reverse_kl', got 'reverse-kl' (did you mean",
        ),
        ("beta = 0.25", "beta = 2", "[distill]: 'beta' must be a number in [0, 1]"),
        ("accumulation_steps = 4", "accumulation_steps = 0", "[distill]: 'accumulation_steps' must be an integer >= 1"),
        ("epochs = 3", "epochs = 3\noffline = true", "[distill]: 'offline = true' caches the teacher's logits"),
        ("epochs = 3", 'epochs = 3\nfilter_teacher_errors = "drop"', "[distill]: 'filter_teacher_errors = \"drop\"'"),
        ('dir = "out"', 'dir = "out"\nformat = "torchscript"', "[output]: 'format = \"torchscript\"': language models"),
        ('dir = "out"', 'dir = "out"\n[augment]\nnoise_std = 0.1', "[augment]: 'noise_std' adds noise to numeric"),
    ],
)
def test_token_data_mistakes(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in TOKENS
    assert expected in error(tmp_path, TOKENS.replace(old, new, 1))


def test_other_divergences_are_for_token_data(tmp_path: Path) -> None:
    message = error(tmp_path, MINIMAL.replace("epochs = 3", 'epochs = 3\ndivergence = "reverse_kl"'))
    assert "[distill]: 'divergence = \"reverse_kl\"' is for token data" in message


def test_the_bytes_example_config_loads() -> None:
    config = load_train_config(EXAMPLE.with_name("bytes.toml"))
    assert config.tokens and config.teacher_training is not None
    assert config.teacher.factory == "distill_eval.train.zoo:bytes_teacher"
    assert config.student.factory == "distill_eval.train.zoo:bytes_student"
