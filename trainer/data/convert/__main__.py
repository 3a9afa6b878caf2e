"""`python -m trainer.data.convert <format> ...`; see `trainer.data.convert.cli`."""

from absl import flags

from trainer.data.convert import cli

# --help lists the converter's flags (absl shows the main module's key flags).
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    cli.run()
