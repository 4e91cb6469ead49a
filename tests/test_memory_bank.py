"""The class-wise memory bank: capacity, FIFO order, candidate filter, selection policies."""

import torch

from trainer.memory_bank import ClassMemoryBank, bank_candidates, per_image_quota


DIM = 32


def _vectors(values: list[int]) -> torch.Tensor:
    """Vector k points along axis k (the bank stores unit vectors, so ids survive as directions)."""
    return 3.0 * torch.nn.functional.one_hot(torch.tensor(values), DIM).float()


def _ids(vectors: torch.Tensor) -> list[int]:
    return vectors.argmax(dim=1).tolist()


def test_capacity_and_fifo_order_newest_first():
    bank = ClassMemoryBank(num_classes=2, capacity=4, dim=DIM)
    for step in range(3):  # three updates of two vectors each to class 1
        values = [10 * step + 1, 10 * step + 2]
        bank.add(_vectors(values), torch.tensor([1, 1]), torch.tensor([0, 1]),
                 scores=torch.zeros(2), per_image=5)
    assert bank.count.tolist() == [0, 4]
    assert bank.fill().tolist() == [0.0, 1.0]
    newest_first = _ids(bank.ordered(1))
    assert torch.allclose(bank.ordered(1).norm(dim=1), torch.ones(4))  # stored as unit vectors
    # the oldest update (1, 2) fell out; step 2 is newest
    assert sorted(newest_first[:2]) == [21, 22] and sorted(newest_first[2:]) == [11, 12]
    assert bank.valid().tolist() == [[False] * 4, [True] * 4]


def test_more_new_vectors_than_capacity_keeps_the_best_ranked():
    bank = ClassMemoryBank(num_classes=1, capacity=3, dim=DIM)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])
    bank.add(_vectors([1, 2, 3, 4, 5]), torch.zeros(5, dtype=torch.long), torch.arange(5), scores, per_image=1)
    assert bank.count.tolist() == [3]
    assert _ids(bank.ordered(0)) == [2, 4, 3]  # best ranked is the newest


def test_policies_per_image_and_class():
    # image 0, class 0: scores 0.1 0.5 0.9 ; image 1, class 0: 0.3 0.8 ; image 0, class 1: 0.2 0.6
    values = [1, 2, 3, 4, 5, 6, 7]
    scores = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.8, 0.2, 0.6])
    images = torch.tensor([0, 0, 0, 1, 1, 0, 0])
    classes = torch.tensor([0, 0, 0, 0, 0, 1, 1])

    def kept(policy: str, per_image: int = 1, seed: int = 0) -> dict[int, set]:
        bank = ClassMemoryBank(num_classes=2, capacity=8, dim=DIM)
        bank.add(_vectors(values), classes, images, scores, per_image, policy, torch.Generator().manual_seed(seed))
        return {c: set(_ids(bank.ordered(c))) for c in range(2)}

    assert kept("highest") == {0: {3, 5}, 1: {7}}
    assert kept("lowest") == {0: {1, 4}, 1: {6}}
    assert kept("highest", per_image=2) == {0: {2, 3, 4, 5}, 1: {6, 7}}
    random_picks = [kept("random", seed=s) for s in range(20)]
    for picks in random_picks:  # one per (image, class), from the right groups
        assert len(picks[0] & {1, 2, 3}) == 1 and len(picks[0] & {4, 5}) == 1 and len(picks[1]) == 1
    assert len({frozenset(p[0]) for p in random_picks}) > 1


def test_candidates_need_a_correct_and_confident_teacher():
    labels = torch.tensor([[[0, 1, 1, 255]]])                    # [1,1,4]
    logits = torch.tensor([[[[5.0, 5.0, 0.0, 5.0]],              # class 0 scores
                            [[0.0, 0.0, 5.0, 0.0]]]])            # class 1 scores  -> [1,2,1,4]
    mask = bank_candidates(logits, labels, threshold=0.95)
    # pixel 0: right and confident; pixel 1: wrong; pixel 2: right and confident; pixel 3: ignored
    assert mask.tolist() == [[[True, False, True, False]]]
    assert not bank_candidates(logits, labels, threshold=0.999).any()


def test_state_dict_round_trip():
    bank = ClassMemoryBank(num_classes=3, capacity=4, dim=2)
    bank.add(torch.randn(6, 2), torch.tensor([0, 0, 1, 2, 2, 2]), torch.arange(6), torch.rand(6), per_image=1)
    other = ClassMemoryBank(num_classes=3, capacity=4, dim=2)
    other.load_state_dict(bank.state_dict())
    for c in range(3):
        assert torch.equal(bank.ordered(c), other.ordered(c))


def test_newest_slots_per_class():
    bank = ClassMemoryBank(num_classes=2, capacity=4, dim=DIM)
    for step in range(3):
        bank.add(_vectors([10 * step + 1, 10 * step + 2]), torch.tensor([1, 1]), torch.tensor([0, 1]),
                 scores=torch.tensor([0.0, 1.0]), per_image=5)
    vectors, valid = bank.newest(3)
    assert valid.tolist() == [[False] * 3, [True] * 3]
    assert _ids(vectors[1]) == _ids(bank.ordered(1))[:3]


def test_per_image_quota_of_the_official_code():
    # Cityscapes 1/30 (99 labeled images) and 1/8 (372): round(256 / |X_l|), at least 1.
    assert per_image_quota(256, 99, 19) == 3 and per_image_quota(256, 372, 19) == 1
    # VOC 1/50 (211 images): int(21 / 3 * round(256 / 211)) = 7; 1/20 (529): round gives 0, so 1.
    assert per_image_quota(256, 211, 21, voc_factor=True) == 7
    assert per_image_quota(256, 211, 21) == 1
    assert per_image_quota(256, 529, 21, voc_factor=True) == 1


def test_one_group_per_class_ranks_across_images():
    # per_batch hands the bank one image index for all: the best of the class over the batch.
    classes = torch.zeros(4, dtype=torch.long)
    images = torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([0.9, 0.8, 0.2, 0.1])
    per_image, per_batch = ClassMemoryBank(1, 8, DIM), ClassMemoryBank(1, 8, DIM)
    per_image.add(_vectors([1, 2, 3, 4]), classes, images, scores, per_image=1)
    per_batch.add(_vectors([1, 2, 3, 4]), classes, torch.zeros_like(images), scores, per_image=2)
    assert sorted(_ids(per_image.ordered(0))) == [1, 3]
    assert sorted(_ids(per_batch.ordered(0))) == [1, 2]  # both from image 0


def test_only_competing_candidates_are_scored_and_the_rest_keep_arrival_order():
    # image 0 class 0: three candidates for a quota of two (they compete); image 1 class 0 and
    # image 0 class 1: one each (they enter unscored). Capacity 8: no class overflows.
    classes = torch.tensor([0, 1, 0, 0, 0])
    images = torch.tensor([0, 0, 0, 1, 0])
    all_scores = torch.tensor([0.2, 0.0, 0.9, 0.0, 0.5])
    asked: list[list[int]] = []

    def score(index: torch.Tensor) -> torch.Tensor:
        asked.append(index.tolist())
        return all_scores[index]

    lazy, eager = ClassMemoryBank(2, 8, DIM), ClassMemoryBank(2, 8, DIM)
    lazy.add(_vectors([1, 2, 3, 4, 5]), classes, images, score, per_image=2)
    eager.add(_vectors([1, 2, 3, 4, 5]), classes, images, all_scores, per_image=2)
    assert asked == [[0, 2, 4]]
    for c in range(2):
        assert torch.equal(lazy.ordered(c), eager.ordered(c))
    assert _ids(lazy.ordered(0)) == [5, 4, 3]  # arrival order, newest first; 1 lost to 3 and 5
    assert _ids(lazy.ordered(1)) == [2]


def test_a_class_over_capacity_is_scored_even_when_no_image_is():
    asked: list[list[int]] = []

    def score(index: torch.Tensor) -> torch.Tensor:
        asked.append(index.tolist())
        return torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])[index]

    bank = ClassMemoryBank(num_classes=2, capacity=3, dim=DIM)
    classes = torch.tensor([0, 0, 0, 0, 0, 1])
    bank.add(_vectors([1, 2, 3, 4, 5, 6]), classes, torch.arange(6), score, per_image=1)
    assert asked == [[0, 1, 2, 3, 4]]  # class 1's single vector fits: never scored
    assert _ids(bank.ordered(0)) == [2, 4, 3]


def test_random_policy_never_scores():
    def score(index: torch.Tensor) -> torch.Tensor:
        raise AssertionError("random picks ignore the scores")

    bank = ClassMemoryBank(1, 4, DIM)
    bank.add(_vectors([1, 2, 3]), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), score,
             per_image=2, policy="random", generator=torch.Generator().manual_seed(0))
    assert bank.count.tolist() == [2]


def test_when_every_candidate_competes_the_scorer_gets_a_view_of_all():
    asked = []

    def score(index):
        asked.append(index)
        return torch.tensor([0.1, 0.9, 0.5, 0.7])[index]

    bank = ClassMemoryBank(1, 8, DIM)
    bank.add(_vectors([1, 2, 3, 4]), torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 1, 1]), score, per_image=1)
    assert asked == [slice(None)]
    assert sorted(_ids(bank.ordered(0))) == [2, 4]
