"""``python -m ephemeral.backends.local [--force]``: prepare this host for the local backend by
building the class-data-sharing archives of its Spark JVMs (``jvm_share``); ``make setup`` runs
it. Exits 1, saying why, when they cannot be built: Spark still starts, only slower."""

import sys

from ephemeral.backends.local.jvm_share import main

sys.exit(main())
