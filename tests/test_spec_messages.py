"""Golden messages of spec errors: file, line, key and close matches, frozen word for word.

Every way a spec can be wrong, with the exact line a user reads; the validation behind them may
change, the messages may not (a test per message would hide a reworded one among hundreds).
"""

import pytest

from atlas.plan.spec import SpecError, parse_spec

BASE = '[job]\nname = "t"\n\n[model]\nname = "tiny-cnn"\n\n[[layers]]\nname = "conv2"\nchannels = "0:4"\n'
cases = {
    "unknown_key": BASE + "\n[render]\nstesp = 10\n",
    "top_level_below_table": '[model]\nname = "tiny-cnn"\nlayers = ["conv2"]\n',
    "unknown_section": BASE + "\n[rendr]\nsteps = 1\n",
    "job_key": '[job]\nnmae = "x"\n' + BASE[len('[job]\nname = "t"\n') :],
    "job_name": '[job]\nname = "a b"\n' + BASE[len('[job]\nname = "t"\n') :],
    "job_out": "[job]\nout = 3\n" + BASE[len('[job]\nname = "t"\n') :],
    "section_not_table": BASE.replace("[job]", "render = 3\n[job]"),
    "int_string": BASE + '\n[render]\nsteps = "ten"\n',
    "int_bool": BASE + "\n[render]\nsteps = true\n",
    "int_float": BASE + "\n[render]\nsteps = 1.5\n",
    "bool": BASE + "\n[render]\nenabled = 1\n",
    "float": BASE + '\n[render]\nlr = "x"\n',
    "float_bool": BASE + "\n[render]\nlr = false\n",
    "str": BASE + "\n[examples]\nsource = 3\n",
    "str_none": BASE + "\n[examples]\ncolumn = 3\n",
    "path": BASE.replace('name = "tiny-cnn"', 'name = "tiny-cnn"\ncheckpoint = 3'),
    "int_or_auto": BASE + '\n[execute]\nworkers = "many"\n',
    "int_or_auto_float": BASE + "\n[execute]\nworkers = 1.5\n",
    "float_or_auto": BASE + '\n[execute]\ngpus_per_worker = "x"\n',
    "float_or_auto_bool": BASE + "\n[execute]\ngpus_per_worker = true\n",
    "str_tuple": BASE + '\n[render]\nobjectives = "channel"\n',
    "str_tuple_items": BASE + '\n[render]\nobjectives = ["channel", 1]\n',
    "quantiles_type": BASE + '\n[examples]\nquantiles = ["a", 1]\n',
    "quantiles_len": BASE + "\n[examples]\nquantiles = [0.1]\n",
    "quantiles_order": BASE + "\n[examples]\nquantiles = [0.9, 0.1]\n",
    "pairs": BASE + '\n[interactions]\npairs = [["conv2", 1]]\n',
    "pairs_type": BASE + '\n[interactions]\npairs = "x"\n',
    "param": BASE + '\n[render]\nparam = "fft"\n',
    "transforms": BASE + '\n[render]\ntransforms = "distil"\n',
    "precision": BASE + '\n[render]\nprecision = "fp8"\n',
    "steps": BASE + "\n[render]\nsteps = 0\n",
    "size": BASE + "\n[render]\nsize = 8\n",
    "batch": BASE + "\n[render]\nbatch = 0\n",
    "lr": BASE + "\n[render]\nlr = 0\n",
    "diversity": BASE + "\n[render]\ndiversity = 1\n",
    "channels_per_unit": BASE + "\n[render]\nchannels_per_unit = 0\n",
    "k": BASE + "\n[examples]\nk = 0\n",
    "shard_size": BASE + "\n[examples]\nshard_size = 0\n",
    "bins": BASE + "\n[examples]\nbins = 1\n",
    "random_directions": BASE + "\n[interactions]\nrandom_directions = -1\n",
    "interpolation_steps": BASE + "\n[interactions]\ninterpolation_steps = 1\n",
    "retries": BASE + "\n[execute]\nretries = -1\n",
    "max_in_flight": BASE + "\n[execute]\nmax_in_flight = -1\n",
    "objective": BASE + '\n[render]\nobjectives = ["channel", "nueron"]\n',
    "workers": BASE + "\n[execute]\nworkers = 0\n",
    "layers_missing": '[model]\nname = "tiny-cnn"\n',
    "layers_item": 'layers = [3]\n[model]\nname = "tiny-cnn"\n',
    "layers_key": BASE + '\n[[layers]]\nname = "conv3"\nchanels = "all"\n',
    "layers_name": BASE + '\n[[layers]]\nchannels = "all"\n',
    "channels_range": BASE.replace('"0:4"', '"4:2"'),
    "channels_negative": BASE.replace('"0:4"', "[1, -1]"),
    "channels_type": BASE.replace('"0:4"', "3"),
    "toml": BASE + "\n[render\n",
}

GOLDEN = [
    (
        "unknown_key",
        "job.toml, line 12: render.stesp: unknown key. did you mean 'steps'? Valid keys: enabled, steps, size, batch, lr, param, decorrelate, decay_power, transforms, objectives, diversity, diversity_weight, seed, precision, channels_per_unit, lr_schedule, coarse_fraction, blur_weight",
    ),
    (
        "top_level_below_table",
        "job.toml, line 3: model.layers: unknown key. 'layers' is a top-level key: move it above the first [table] or write [[layers]]. Valid keys: name, checkpoint, weights, checkpoints, path, input_size, mean, std, value_range",
    ),
    (
        "unknown_section",
        "job.toml, line 11: [rendr]: unknown section. did you mean 'render'? Valid sections: job, layers, model, render, examples, interactions, activation_atlas, execute, timeline, cost",
    ),
    (
        "job_key",
        "job.toml, line 2: job.nmae: unknown key. did you mean 'name'? Valid keys: name, out, keep_runs",
    ),
    (
        "job_name",
        "job.toml, line 2: job.name: job name 'a b' is not allowed: a job name is letters, digits, '.', '_' "
        "or '-' (not '.' or '..'), because the default output folder atlas-out/<name> must stay inside "
        "atlas-out/; choose a plain name such as 'demo'",
    ),
    ("job_out", "job.toml, line 2: job.out: expected a path string, got integer 3"),
    ("section_not_table", "job.toml: [render]: expected a table [render], got integer"),
    ("int_string", "job.toml, line 12: render.steps: expected an integer, got string 'ten'"),
    ("int_bool", "job.toml, line 12: render.steps: expected an integer, got boolean True"),
    ("int_float", "job.toml, line 12: render.steps: expected an integer, got number 1.5"),
    ("bool", "job.toml, line 12: render.enabled: expected true or false, got integer 1"),
    ("float", "job.toml, line 12: render.lr: expected a number, got string 'x'"),
    ("float_bool", "job.toml, line 12: render.lr: expected a number, got boolean False"),
    ("str", "job.toml, line 12: examples.source: expected a string, got integer 3"),
    ("str_none", "job.toml, line 12: examples.column: expected a string, got integer 3"),
    ("path", "job.toml, line 6: model.checkpoint: expected a path string, got integer 3"),
    ("int_or_auto", "job.toml, line 12: execute.workers: expected an integer or \"auto\", got string 'many'"),
    (
        "int_or_auto_float",
        'job.toml, line 12: execute.workers: expected an integer or "auto", got number 1.5',
    ),
    (
        "float_or_auto",
        "job.toml, line 12: execute.gpus_per_worker: expected a number or \"auto\", got string 'x'",
    ),
    (
        "float_or_auto_bool",
        'job.toml, line 12: execute.gpus_per_worker: expected a number or "auto", got boolean True',
    ),
    ("str_tuple", "job.toml, line 12: render.objectives: expected an array of strings, got string 'channel'"),
    (
        "str_tuple_items",
        "job.toml, line 12: render.objectives: expected an array of strings, got array ['channel', 1]",
    ),
    (
        "quantiles_type",
        "job.toml, line 12: examples.quantiles: expected an array of two numbers like [0.25, 0.75], got array ['a', 1]",
    ),
    (
        "quantiles_len",
        "job.toml, line 12: examples.quantiles: expected an array of two numbers like [0.25, 0.75], got array [0.1]",
    ),
    (
        "quantiles_order",
        "job.toml, line 12: examples.quantiles: (0.9, 0.1) is not allowed: must be [low, high] within 0..1",
    ),
    (
        "pairs",
        "job.toml, line 12: interactions.pairs: expected an array of [layer, channel_a, channel_b] like [[\"mixed4a\", 1, 2]], got array [['conv2', 1]]",
    ),
    (
        "pairs_type",
        "job.toml, line 12: interactions.pairs: expected an array of [layer, channel_a, channel_b] like [[\"mixed4a\", 1, 2]], got string 'x'",
    ),
    ("param", "job.toml, line 12: render.param: 'fft' is not allowed: choose one of fourier, pixel, maco"),
    (
        "transforms",
        "job.toml, line 12: render.transforms: 'distil' is not allowed: choose one of wider, wide, standard, distill, vit, none",
    ),
    (
        "precision",
        "job.toml, line 12: render.precision: 'fp8' is not allowed: choose one of fp32, fp16, bf16",
    ),
    ("steps", "job.toml, line 12: render.steps: 0 is not allowed: must be at least 1"),
    ("size", "job.toml, line 12: render.size: 8 is not allowed: must be between 16 and 1024 pixels"),
    ("batch", "job.toml, line 12: render.batch: 0 is not allowed: must be at least 1"),
    ("lr", "job.toml, line 12: render.lr: 0.0 is not allowed: must be positive"),
    ("diversity", "job.toml, line 12: render.diversity: 1 is not allowed: must be at least 2"),
    (
        "channels_per_unit",
        "job.toml, line 12: render.channels_per_unit: 0 is not allowed: must be at least 1",
    ),
    ("k", "job.toml, line 12: examples.k: 0 is not allowed: must be at least 1"),
    ("shard_size", "job.toml, line 12: examples.shard_size: 0 is not allowed: must be at least 1"),
    ("bins", "job.toml, line 12: examples.bins: 1 is not allowed: must be at least 2"),
    (
        "random_directions",
        "job.toml, line 12: interactions.random_directions: -1 is not allowed: must be >= 0",
    ),
    (
        "interpolation_steps",
        "job.toml, line 12: interactions.interpolation_steps: 1 is not allowed: must be at least 2",
    ),
    ("retries", "job.toml, line 12: execute.retries: -1 is not allowed: must be >= 0"),
    ("max_in_flight", "job.toml, line 12: execute.max_in_flight: -1 is not allowed: must be >= 0"),
    (
        "objective",
        "job.toml, line 12: render.objectives: unknown objective 'nueron'. did you mean 'neuron'? Choose from channel, neuron, negative, diversity",
    ),
    ("workers", 'job.toml, line 12: execute.workers: must be at least 1 or "auto"'),
    ("layers_missing", 'job.toml: [layers]: expected at least one [[layers]] table with name = "..."'),
    ("layers_item", "job.toml: [layers]: expected a table or a layer name, got integer"),
    (
        "layers_key",
        "job.toml, line 13: layers.chanels: unknown key. did you mean 'channels'? Valid keys: name, channels, dictionary, sae, visualize, sae_compare, sae_objective",
    ),
    ("layers_name", 'job.toml, line 11: layers.name: every [[layers]] table needs name = "<layer>"'),
    (
        "channels_range",
        'job.toml, line 9: layers.channels: expected "all", "start:stop" or an array of integers, got \'4:2\'',
    ),
    ("channels_negative", "job.toml, line 9: layers.channels: channels must be >= 0, got [1, -1]"),
    (
        "channels_type",
        'job.toml, line 9: layers.channels: expected "all", "start:stop" or an array of integers, got 3',
    ),
    (
        "toml",
        "job.toml: not valid TOML: Expected ']' at the end of a table declaration (at line 11, column 8)",
    ),
]


def test_every_case_has_a_golden_message():
    assert [name for name, _ in GOLDEN] == list(cases)


@pytest.mark.parametrize(("name", "message"), GOLDEN, ids=[name for name, _ in GOLDEN])
def test_message(name, message):
    with pytest.raises(SpecError) as err:
        parse_spec(cases[name], source="job.toml")
    assert str(err.value) == message
