"""Test a model from an mmdet or mmseg config (dispatches on the config's default_scope).

    python tools/test.py CONFIG CHECKPOINT [--out F] [--show] [--show-dir D] [--tta] [--cfg-options k=v ...]

The options are mmdet's and mmseg's; see `python tools/test.py --help` and mmmambavision/engine/entrypoints.py.
"""
try:
    from mmmambavision.engine.entrypoints import test_main
except ModuleNotFoundError as error:  # pragma: no cover - only without the package installed
    if error.name != 'mmmambavision':
        raise
    raise SystemExit(f'{error}: install the package first (bash tools/setup_env.sh, or pip install -e .) and run '
                     'with that environment\'s python, e.g. .venv/bin/python tools/test.py ...')

if __name__ == '__main__':
    test_main()
