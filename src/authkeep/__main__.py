from authkeep.cli import main

main()
