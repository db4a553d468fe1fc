"""`python -m extauth.demo` is what `make demo` runs."""

from extauth.demo.runner import main

raise SystemExit(main())
