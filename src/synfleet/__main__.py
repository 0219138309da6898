from synfleet.cli import main

main()
