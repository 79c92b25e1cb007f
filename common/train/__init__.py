"""Training rules shared by stages: seeding, optimiser groups, accuracy, one SGD epoch over a tensor."""
