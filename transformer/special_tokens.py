"""Token ids that every tokenizer of this project reserves, and the model relies on."""

PAD_ID = 0  # Padding; never attended to, never scored.
EOS_ID = 1  # Ends every sentence.
BOS_ID = 2  # Starts the shifted-right decoder input.
UNK_ID = 3  # Words outside the vocabulary.
NUM_SPECIAL = 4
