"""Entry point: `python launch.py --config=configs/imagenet512.py --workdir=DIR [--mode=train]`.

Parses flags, initialises the distributed runtime, and hands over to `sd_jax.main`.
Any config field can be overridden: `--config.model.dropout=0.1`.
"""

import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "inspect"], "What to run.")
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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad config file or override key is one line on stderr, exit 1."""
    config_file = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_file and not os.path.isfile(config_file.split(":")[0]):
        print(f"error: config file not found: {config_file}", file=sys.stderr)
        sys.exit(1)
    try:
        rest = app.parse_flags_with_usage(argv)
        _ = FLAGS.config.seed  # A config file that failed to load raises only when read.
        return rest
    except (AttributeError, KeyError) as e:  # ml_collections: unknown override key.
        message = _unknown_key_message(e, argv)
    except (OSError, SyntaxError, ImportError, ValueError, TypeError) as e:
        message = f"could not load --config: {' '.join(str(e).split())}"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv: list[str]) -> None:
    del argv
    from sd_jax import main as sd_main

    sd_main.run_cli(
        config=FLAGS.config,
        workdir=FLAGS.workdir,
        mode=FLAGS.mode,
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=parse_flags)
