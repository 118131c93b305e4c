"""``openeva quickstart --data --minutes``: the time model that turns a budget into steps. One short timed run
counted its fixed costs (build, load, scoring) as step costs and planned a 30 min run that took 5 (issue 13);
two runs of different lengths separate them."""

from __future__ import annotations

import pytest

from openeva.quickstart.budget import MIN_FINETUNE_STEPS, Plan, StepCost, chain_plan, fit_factor, plan_steps


def test_two_timed_runs_separate_the_step_from_the_stage():
    # a CPU where a stage costs 20 s once and a step 0.1 s: 2 steps take 20.2 s, 10 steps 21 s
    cost = StepCost.from_runs(2, 20.2, 10, 21.0)
    assert cost.step_s == pytest.approx(0.1) and cost.stage_s == pytest.approx(20.0)
    # the old estimate (one run's time over its steps) was 10x the step cost here
    assert 21.0 / 10 > 10 * cost.step_s


def test_timing_noise_keeps_the_costs_positive():
    cost = StepCost.from_runs(2, 5.0, 10, 4.9)  # the longer run came out faster
    assert cost.step_s > 0 and cost.stage_s >= 0
    with pytest.raises(ValueError, match="short_steps < long_steps"):
        StepCost.from_runs(10, 1.0, 10, 2.0)


def test_the_fitted_factor_fills_the_budget():
    cost = StepCost(step_s=0.1, stage_s=20.0)
    plan = chain_plan(800, 800, 150, batch_size=128, num_images=65000, num_train=60000, cost=cost)
    factor = fit_factor(plan, seconds_left=1800.0, minutes=30)
    assert plan.seconds(factor) == pytest.approx(1800.0)
    # more steps cost more, and the stages' fixed costs are paid whatever the steps
    assert plan.per_factor_s > 0 and plan.seconds(2 * factor) > plan.seconds(factor) > plan.fixed_s > 7 * 20.0
    # a cheaper step leaves room for more steps in the same budget
    cheaper = chain_plan(800, 800, 150, 128, 65000, 60000, StepCost(step_s=0.05, stage_s=20.0))
    assert fit_factor(cheaper, 1800.0, 30) > factor


def test_a_budget_below_the_fixed_costs_is_a_clear_error():
    plan = Plan(fixed_s=300.0, per_factor_s=1000.0)
    with pytest.raises(ValueError, match=r"--minutes 2 leaves no time to train.*at least --minutes \d+"):
        fit_factor(plan, seconds_left=100.0, minutes=2)


def test_a_fixed_fine_tune_moves_its_cost_out_of_the_factor():
    """Below MIN_FINETUNE_STEPS the budget keeps the fine-tune and shortens the pretraining: the fine-tune's three
    runs ((a), (b) and (c)'s share) become a fixed cost, so the factor buys teacher and MIM steps only."""
    cost = StepCost(step_s=0.3, stage_s=4.0)
    scaled = chain_plan(800, 800, 100, 128, 65000, 60000, cost)
    fixed = chain_plan(800, 800, 100, 128, 65000, 60000, cost, scale_finetune=False)
    assert fixed.fixed_s - scaled.fixed_s == pytest.approx(3 * 100 * 0.3)
    assert scaled.per_factor_s - fixed.per_factor_s == pytest.approx(3 * 100 * 0.3)
    assert fixed.seconds(1.0) == pytest.approx(scaled.seconds(1.0))  # the same run at factor 1
    assert fit_factor(fixed, 720.0, 12) < fit_factor(scaled, 720.0, 12)


def test_a_small_budget_keeps_the_fine_tune_and_shortens_the_pretraining():
    cost, sizes = StepCost(step_s=0.3, stage_s=4.0), (128, 65000, 60000)
    # 12 minutes on this cost: one factor would give the 150-step fine-tune about 50 steps
    one_factor = fit_factor(chain_plan(800, 800, 150, *sizes, cost), 700.0, 12)
    assert round(150 * one_factor) < MIN_FINETUNE_STEPS
    factor, finetune = plan_steps(800, 800, 150, *sizes, cost, seconds_left=700.0, minutes=12)
    assert finetune == MIN_FINETUNE_STEPS and factor < one_factor
    # a large budget scales every stage by one factor; a configured fine-tune shorter than the floor is kept
    factor, finetune = plan_steps(800, 800, 150, *sizes, cost, seconds_left=7200.0, minutes=120)
    assert finetune == round(150 * factor) > 150
    assert plan_steps(800, 800, 4, *sizes, cost, seconds_left=700.0, minutes=12)[1] >= 4
