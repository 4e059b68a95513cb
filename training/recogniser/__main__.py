from training.recogniser.train import main

raise SystemExit(main())
