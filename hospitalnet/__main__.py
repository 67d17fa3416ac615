from hospitalnet.threads import configure_openmp

configure_openmp()  # before torch is imported: OpenMP reads its wait policy once

from hospitalnet.cli import main  # noqa: E402

raise SystemExit(main())
