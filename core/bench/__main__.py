from core.bench.cli import main

main()
