"""The command line: `sd-jax` (installed by `pip install .`) and `python launch.py` are this.

`sd-jax --config=imagenet512 --workdir=DIR [--mode=train]` parses flags, initialises
the distributed runtime and hands over to `sd_jax.main`. Any config field can be overridden:
`--config.model.dropout=0.1`. Logs are warnings only unless `--verbosity=0` (INFO) or 1
(DEBUG). Flags are defined when this module is imported, so only the two entry points import it.
"""

import importlib.util
import os
import re
import sys
import traceback
from pathlib import Path

import ml_collections
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "inspect", "plan"],
                  "What to run.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
FLAGS = flags.FLAGS


def _unknown_key_message(error: BaseException, argv: list[str]) -> str:
    """One line naming the bad override key (and ml_collections' suggestion, if any)."""
    text = str(error).replace("\\n", "\n").replace("\\'", "'")
    found = re.search(r'Key "([^"]+)"', text) or re.search(r"'([^'\s]+)'", text)
    key = found.group(1) if found else text.split("\n")[0]
    bad = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a.split("=")[0]]
    where = f" ({', '.join(bad)})" if bad else ""
    hint = re.search(r'Did you mean "([^"]+)"', text)
    suggestion = f' Did you mean "{hint.group(1)}"?' if hint else ""
    return f"unknown config key '{key}'{where}.{suggestion} Fields: configs/base.py"


def shipped_configs() -> Path:
    """The folder of the shipped config files (`sd_jax.configs`: installed, or the checkout's)."""
    import sd_jax.configs

    return Path(sd_jax.configs.__file__).parent


def resolve_config(config_spec: str) -> str | None:
    """`--config`'s value with its file resolved, or None if there is no such file.

    A path that exists is used as given; otherwise a shipped config is found by its name from any
    directory: `quickstart`, `quickstart.py` and `configs/quickstart.py` all name
    sd_jax/configs/quickstart.py. A `:argument` suffix is kept.
    """
    path, colon, arg = config_spec.partition(":")
    if os.path.isfile(path):
        return config_spec
    folder, name = os.path.split(path)
    shipped = shipped_configs() / (name if name.endswith(".py") else f"{name}.py")
    if folder in ("", "configs") and name and shipped.is_file():
        return f"{shipped}{colon}{arg}"
    return None


def _names(folder: Path) -> str:
    return ", ".join(sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")))


def _config_file_error(config_spec: str) -> str | None:
    """Runs the config file's get_config() once; any exception in it -> one line with its place.

    Loading it before absl does keeps an error inside the file (a NameError, a KeyError) apart
    from a bad command-line override, and keeps its traceback off the screen.
    """
    path, _, arg = config_spec.partition(":")
    try:
        spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            return ("it defines no get_config(); a config file defines get_config() returning an "
                    "ml_collections.ConfigDict (e.g. configs/quickstart.py)")
        config = module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # Whatever the file raises, the user fixes it in the file.
        if isinstance(e, SyntaxError):
            where = f"{e.filename}:{e.lineno}"
        else:  # The innermost frame in the user's files, not in a library.
            library = (os.path.dirname(os.__file__), "site-packages")
            frames = traceback.extract_tb(e.__traceback__)
            mine = [f for f in frames if not any(part in f.filename for part in library)]
            frame = (mine or frames)[-1]
            where = f"{frame.filename}:{frame.lineno}"
        return f"{type(e).__name__}: {' '.join(str(e).split())} ({where})"
    if not isinstance(config, ml_collections.ConfigDict):
        return (f"get_config() returned {type(config).__name__} {str(config)[:60]!r}, not an "
                "ml_collections.ConfigDict (does it end with `return config`?)")
    return None


def quiet_by_default() -> None:
    """Warnings and errors only, unless --verbosity is given (0: INFO, 1: DEBUG).

    absl raises an unset --verbosity to INFO after parsing, which shows orbax's ~60 INFO lines
    per checkpoint. Setting it here marks the flag as set; absl then puts the level on the root
    Python logger (its handler sits there), which orbax's and jax's Python loggers inherit.
    """
    if FLAGS["verbosity"].using_default_value:
        FLAGS.verbosity = -1  # absl's WARNING.


def overridden_paths(argv: list[str]) -> list[str]:
    """The config paths given on the command line: `--config.model.dropout=0.1` ->
    'model.dropout' (and `--noconfig.x` / `--config.x VALUE` forms)."""
    paths = []
    for arg in argv:
        for prefix in ("--config.", "--noconfig."):
            if arg.startswith(prefix):
                paths.append(arg[len(prefix):].split("=", 1)[0])
    return paths


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad config file or override key is one line on stderr, exit 1.

    A shipped config may be given by its name from any directory (`resolve_config`)."""
    index = next((i for i, a in enumerate(argv) if a.startswith("--config=")), None)
    config_file = argv[index].split("=", 1)[1] if index is not None else None
    message = None
    if config_file and (resolved := resolve_config(config_file)) is None:
        message = (f"config file not found: {config_file}; the shipped configs, by name from "
                   f"any directory (e.g. --config=quickstart): {_names(shipped_configs())}")
    elif config_file and (problem := _config_file_error(resolved)):
        message = f"could not load --config={config_file}: {problem}"
    elif config_file:
        argv = [*argv[:index], f"--config={resolved}", *argv[index + 1:]]
    if message is None:
        try:
            rest = FLAGS(argv)
            _ = FLAGS.config.seed  # A config file that failed to load raises only when read.
            quiet_by_default()
            return rest
        except (AttributeError, KeyError) as e:  # ml_collections: unknown override key.
            message = _unknown_key_message(e, argv)
        except flags.Error as e:  # A flag value that does not parse (--config.x=abc).
            message = " ".join(str(e).split())
        except (OSError, SyntaxError, ImportError, ValueError, TypeError) as e:
            message = f"could not load --config: {' '.join(str(e).split())}"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def _run(argv: list[str]) -> None:
    del argv
    from sd_jax import main as sd_main

    sd_main.run_cli(
        config=FLAGS.config,
        workdir=FLAGS.workdir,
        mode=FLAGS.mode,
        overridden=overridden_paths(sys.argv),
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
    )


def main() -> None:
    """Console entry point (`sd-jax`, `python launch.py`)."""
    # absl's --help lists the key flags of the script that runs (sys.argv[0]), which is not
    # this module: make ours its key flags, and its usage text ours if it has none.
    for flag in FLAGS.get_key_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    main_module = sys.modules["__main__"]
    if not main_module.__doc__:
        main_module.__doc__ = __doc__
    flags.mark_flags_as_required(["config"])
    app.run(_run, flags_parser=parse_flags)
