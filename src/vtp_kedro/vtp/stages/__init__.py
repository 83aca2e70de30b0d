"""One module per trained stage, each with its config, its model and its ``TrainTask``:
``tokenizer_pretraining`` (the joint VTP objective), ``decoder_gan`` (the frozen encoder's
decoder against a discriminator), ``dit`` (flow matching on the latents); ``flops`` counts a
tokenizer step's FLOPs for compute budgets."""
