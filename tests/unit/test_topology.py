from rescompile.graph.topology import find_residual_blocks


def test_tiny_resnet_blocks_found_with_projection_and_identity(tiny_onnx):
    blocks = find_residual_blocks(tiny_onnx)
    assert [b.shortcut_kind for b in blocks] == ["projection", "identity"]
    for b in blocks:
        assert b.main_producer_op == "Conv"
        assert b.follower == "Relu"
        assert b.main != b.shortcut
    # The identity block's shortcut is the first block's output, which is its block input.
    assert blocks[1].shortcut == blocks[1].block_input
