"""Entry point: `python launch.py --config=configs/imagenet512.py --workdir=DIR [--mode=train]`.

Parses flags, initialises the distributed runtime, and hands over to `sd_jax.main`.
Any config field can be overridden: `--config.model.dropout=0.1`.
"""

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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad config file or override key is one line on stderr, exit 1."""
    try:
        rest = app.parse_flags_with_usage(argv)
        _ = FLAGS.config.seed  # A config file that failed to load raises only when read.
        return rest
    except (AttributeError, KeyError) as e:  # ml_collections: unknown override key.
        key = str(e).strip("'\"")
        names = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        bad = [name for name in names if key in name.split(".")]
        where = f" ({', '.join(bad)})" if bad else ""
        message = f"unknown config key '{key}'{where}; see configs/base.py for the fields"
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
