"""Train a model from an mmdet or mmseg config (dispatches on the config's default_scope).

    python tools/train.py CONFIG [--work-dir D] [--resume [CKPT]] [--amp] [--auto-scale-lr] [--cfg-options k=v ...]

The options are mmdet's and mmseg's; see `python tools/train.py --help` and mmmambavision/engine/entrypoints.py.
"""
try:
    from mmmambavision.engine.entrypoints import train_main
except ModuleNotFoundError as error:  # pragma: no cover - only without the package installed
    if error.name != 'mmmambavision':
        raise
    raise SystemExit(f'{error}: install the package first (bash tools/setup_env.sh, or pip install -e .) and run '
                     'with that environment\'s python, e.g. .venv/bin/python tools/train.py ...')

if __name__ == '__main__':
    train_main()
