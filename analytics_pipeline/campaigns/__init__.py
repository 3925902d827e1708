"""Campaign dispatch tracking: broker messages of the campaign packer and senders."""
