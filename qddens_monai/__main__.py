"""``python -m qddens_monai ...`` = the ``qddens-monai`` command."""

from .cli import main

raise SystemExit(main())
