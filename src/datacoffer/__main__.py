from datacoffer.cli.main import main

main()
