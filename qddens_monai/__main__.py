"""``python -m qddens_monai ...`` = the ``qddens-monai`` command."""

from qddens_monai.cli import main

raise SystemExit(main())
