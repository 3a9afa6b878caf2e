"""`python -m trainer.data.convert <format> ...`; see `trainer.data.convert.cli`."""

from trainer.data.convert import cli

if __name__ == "__main__":
    cli.run()
