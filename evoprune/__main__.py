from evoprune.cli import main

main()
