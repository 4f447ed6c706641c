from lit_finetune.cli import main

main()
