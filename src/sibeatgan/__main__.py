from sibeatgan.cli import main

main()
