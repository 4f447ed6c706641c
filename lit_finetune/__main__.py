from lit_finetune.commands import main

main()
