from core.compare.cli import main

main()
