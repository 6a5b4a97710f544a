"""Entry point: `python main.py fit --config configs/noprop_dt.yaml` (see README.md)."""

from lightning_noprop.cli import main

if __name__ == "__main__":
    main()
