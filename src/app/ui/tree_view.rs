//! The speculation tree of one round, as SVG: nodes appear depth by depth (CSS animation delay by
//! depth), pruned nodes fade, the accepted path lights up, rejected branches and the bonus token
//! are marked. Hover (or focus) a node for its token and draft confidence; the scrubber replays
//! earlier rounds.

use leptos::ev;
use leptos::prelude::*;

use super::AppState;
use crate::app::layout::layout;
use crate::speculative::tree::NodeStatus;

const DX: f32 = 46.0;
const DY: f32 = 52.0;
const MARGIN: f32 = 26.0;

fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Expanded => "expanded",
        NodeStatus::Pruned => "pruned",
        NodeStatus::Accepted => "accepted",
        NodeStatus::Rejected => "rejected",
        NodeStatus::Bonus => "bonus",
    }
}

/// A short label: the token's text, visible whitespace, at most 6 characters.
fn short(text: &str) -> String {
    let t = text.replace(' ', "·").replace('\n', "⏎");
    let mut s: String = t.chars().take(6).collect();
    if t.chars().count() > 6 {
        s.push('…');
    }
    s
}

#[component]
pub fn TreeView() -> impl IntoView {
    let st = expect_context::<AppState>();
    let count = move || st.rounds.with(|r| r.len());
    let index = move || {
        let n = count();
        st.shown
            .get()
            .filter(|&i| i < n)
            .unwrap_or(n.saturating_sub(1))
    };
    let svg = move || {
        let round = st.rounds.with(|r| r.get(index()).cloned());
        let Some(round) = round else {
            return view! { <svg data-testid="tree" class="tree" width="300" height="80" role="img" aria-label="no rounds yet"></svg> }
                .into_any();
        };
        let lay = layout(&round.nodes);
        let width = (lay.columns.max(1) as f32 - 1.0) * DX + 2.0 * MARGIN;
        let height = (lay.rows.max(1) as f32 - 1.0) * DY + 2.0 * MARGIN;
        let at = |i: usize| {
            let (x, y) = lay.positions[i];
            (MARGIN + x * DX, MARGIN + y as f32 * DY)
        };
        let edges = round
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.parent.map(|p| (p, i, n.status)))
            .map(|(p, i, status)| {
                let ((x1, y1), (x2, y2)) = (at(p), at(i));
                view! { <line class=format!("edge {}", status_name(status)) x1=x1 y1=y1 x2=x2 y2=y2></line> }
            })
            .collect::<Vec<_>>();
        let nodes = round
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let (x, y) = at(i);
                let node = n.clone();
                let node2 = n.clone();
                let status = status_name(n.status);
                view! {
                    <g
                        class=format!("node {status}")
                        data-status=status
                        data-depth=n.depth
                        tabindex="0"
                        style=format!("animation-delay: {}ms", n.depth * 90)
                        transform=format!("translate({x},{y})")
                        on:mouseenter=move |_| st.hovered.set(Some(node.clone()))
                        on:focus=move |_| st.hovered.set(Some(node2.clone()))
                        on:mouseleave=move |_| st.hovered.set(None)
                    >
                        <circle r="16"></circle>
                        <text text-anchor="middle" dy="4">{short(&n.text)}</text>
                    </g>
                }
            })
            .collect::<Vec<_>>();
        view! {
            <svg
                data-testid="tree"
                class="tree"
                data-round=round.round
                width=width
                height=height
                viewBox=format!("0 0 {width} {height}")
                // Scaled to the panel, but never below about half size: wider trees scroll.
                style=format!("min-width: {:.0}px", width * 0.55)
                role="img"
                aria-label=format!("speculation tree of round {}: {} nodes, {} accepted", round.round, round.nodes.len(), round.accepted)
            >
                <g class="edges">{edges}</g>
                <g class="nodes">{nodes}</g>
            </svg>
        }
        .into_any()
    };
    let tooltip = move || {
        st.hovered.get().map(|n| {
            format!(
                "“{}” — draft confidence {:.1}% (path {:.1}%), depth {}, {}",
                n.text,
                n.prob * 100.0,
                (n.score as f64).exp() * 100.0,
                n.depth,
                status_name(n.status)
            )
        })
    };
    view! {
        <section class="tree-panel">
            <h2>"Speculation tree"</h2>
            <p class="legend">
                <span class="key accepted">"accepted"</span>
                <span class="key bonus">"bonus (target's own token)"</span>
                <span class="key rejected">"rejected"</span>
                <span class="key expanded">"verified, not reached"</span>
                <span class="key pruned">"pruned"</span>
            </p>
            <div class="tree-scroll">{svg}</div>
            <p class="tooltip" aria-live="polite">{move || tooltip().unwrap_or_else(|| "Hover a node to see its token and the draft's confidence.".into())}</p>
            <label class="scrubber">
                {move || format!("round {} of {}", if count() == 0 { 0 } else { index() + 1 }, count())}
                <input
                    type="range"
                    data-testid="round-scrubber"
                    min="1"
                    max=move || count().max(1)
                    prop:value=move || (index() + 1).to_string()
                    prop:disabled=move || count() < 2
                    on:input=move |e: ev::Event| {
                        if let Ok(v) = event_target_value(&e).parse::<usize>() {
                            let n = count();
                            st.shown.set(if v >= n { None } else { Some(v.saturating_sub(1)) });
                        }
                    }
                />
            </label>
        </section>
    }
}
