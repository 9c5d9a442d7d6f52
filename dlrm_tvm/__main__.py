from dlrm_tvm.cli import main

raise SystemExit(main())
