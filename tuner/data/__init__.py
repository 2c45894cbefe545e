"""The data: reading images (`images`), finding a dataset and splitting it (`discover`), unpacking
zips safely (`archives`), transforms and augmentation (`transforms`), seeding and batch order
(`sampling`), the built-in demo set (`demo`) and the pictures the studio shows of it (`preview`)."""
