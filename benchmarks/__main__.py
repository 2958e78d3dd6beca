"""List the benchmarks: ``python -m benchmarks``."""

import pkgutil
from pathlib import Path

import benchmarks


def main() -> None:
    here = Path(benchmarks.__file__).parent
    names = [m.name for m in pkgutil.iter_modules([str(here)]) if m.name != "__main__"]
    print("Run one with: python -m benchmarks.<name> --help")
    for name in sorted(names):
        print(f"  {name}")


if __name__ == "__main__":
    main()
