"""`python -m trainer`: the same as the `deeplab-train` console script."""

from trainer.cli import main

if __name__ == "__main__":
    main()
