//! Numbers of the finished caption: tokens/s, tau, rounds, acceptance by depth (a small bar
//! chart), and "compare": plain decoding of the same image, both outputs and times side by side.

use leptos::prelude::*;

use super::{AppState, Status};
use crate::app::layout::acceptance_by_depth;
use crate::app::messages::RunResult;

fn speed(r: &RunResult) -> String {
    format!(
        "{:.1} tokens/s, {:.0} ms in all",
        r.tokens_per_s, r.total_ms
    )
}

#[component]
pub fn Stats() -> impl IntoView {
    let st = expect_context::<AppState>();
    let summary = move || {
        st.result.get().map(|r| {
            let spec = r
                .spec
                .as_ref()
                .map(|s| {
                    format!(
                        "tau {:.2} tokens per target pass ({:.2} drafted), {} rounds, {:.1} tree nodes per round",
                        s.tau, s.tau_without_bonus, s.rounds, s.mean_tree_nodes
                    )
                })
                .unwrap_or_else(|| "plain decoding (no draft loaded)".into());
            view! {
                <p class="speed" data-testid="speed">{speed(&r)}</p>
                <p class="spec-stats">{spec}</p>
            }
        })
    };
    let chart = move || {
        let acc = st.rounds.with(|r| acceptance_by_depth(r));
        if acc.is_empty() {
            return None;
        }
        let bars = acc
            .iter()
            .enumerate()
            .map(|(d, a)| {
                let h = (a * 60.0) as f32;
                let x = 8.0 + d as f32 * 26.0;
                view! {
                    <g>
                        <rect x=x y=70.0 - h width="20" height=h></rect>
                        <text x=x + 10.0 y="84" text-anchor="middle">{d + 1}</text>
                    </g>
                }
            })
            .collect::<Vec<_>>();
        let width = 16.0 + acc.len() as f32 * 26.0;
        let label = acc
            .iter()
            .enumerate()
            .map(|(d, a)| format!("depth {}: {:.0}%", d + 1, a * 100.0))
            .collect::<Vec<_>>()
            .join(", ");
        Some(view! {
            <figure class="depth-chart">
                <svg width=width height="90" role="img" aria-label=format!("acceptance by depth: {label}")>{bars}</svg>
                <figcaption>"acceptance by depth (share of rounds that reached it)"</figcaption>
            </figure>
        })
    };
    let compare_result = move || {
        let (spec, plain) = (st.result.get(), st.plain.get());
        match (spec, plain) {
            (Some(s), Some(p)) => {
                let same = s.tokens == p.tokens;
                let ratio = if s.total_ms > 0.0 {
                    p.total_ms / s.total_ms
                } else {
                    0.0
                };
                Some(view! {
                    <div data-testid="compare-result" class=if same { "compare identical" } else { "compare different" }>
                        <p>{if same { "identical outputs" } else { "outputs differ" }}</p>
                        <p>"speculative: " {speed(&s)}</p>
                        <p>"plain: " <span data-testid="plain-caption">{p.text.clone()}</span> " — " {speed(&p)}</p>
                        <p>{format!("speed-up {ratio:.2}x")}</p>
                    </div>
                })
            }
            _ => None,
        }
    };
    view! {
        <section class="stats">
            {summary}
            {chart}
            <button
                type="button"
                data-testid="compare"
                prop:disabled=move || st.result.get().is_none() || st.status.get() == Status::Generating
                on:click=move |_| st.compare()
            >
                "compare with plain decoding"
            </button>
            <Show when=move || st.plain.get().is_none() && !st.plain_text.get().is_empty()>
                <p class="plain-progress">"plain: " {move || st.plain_text.get()}</p>
            </Show>
            {compare_result}
        </section>
    }
}
