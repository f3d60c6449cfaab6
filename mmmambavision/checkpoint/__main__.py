"""``python -m mmmambavision.checkpoint FILE...``: the globals each file names and which of them are refused."""
from . import globals_in_checkpoint, refused_globals_in_checkpoint


def main() -> None:  # pragma: no cover - a diagnostic
    import sys
    for filename in sys.argv[1:]:
        names = globals_in_checkpoint(filename)
        refused = set(refused_globals_in_checkpoint(filename))
        print(f'{filename}: {len(names)} globals, {len(refused)} refused')
        for name in names:
            print(f'  {"REFUSED " if name in refused else "allowed "} {name}')


if __name__ == '__main__':
    main()
