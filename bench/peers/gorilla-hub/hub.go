package main

import "sync"

// Hub maintains the set of active clients of one room and broadcasts
// messages to them. It is the gorilla/websocket chat example's hub,
// unchanged but for being one per room.
type Hub struct {
	// Registered clients.
	clients map[*Client]bool

	// Inbound messages from the clients.
	broadcast chan []byte

	// Register requests from the clients.
	register chan *Client

	// Unregister requests from clients.
	unregister chan *Client
}

func newHub() *Hub {
	return &Hub{
		broadcast:  make(chan []byte),
		register:   make(chan *Client),
		unregister: make(chan *Client),
		clients:    make(map[*Client]bool),
	}
}

func (h *Hub) run() {
	for {
		select {
		case client := <-h.register:
			h.clients[client] = true
		case client := <-h.unregister:
			if _, ok := h.clients[client]; ok {
				delete(h.clients, client)
				close(client.send)
			}
		case message := <-h.broadcast:
			for client := range h.clients {
				select {
				case client.send <- message:
				default:
					close(client.send)
					delete(h.clients, client)
				}
			}
		}
	}
}

// rooms maps ?room= names to their hubs; a hub lives as long as the
// process, as in a chat server that keeps its rooms.
type rooms struct {
	mu   sync.Mutex
	hubs map[string]*Hub
}

func (r *rooms) get(name string) *Hub {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hubs[name]
	if h == nil {
		h = newHub()
		r.hubs[name] = h
		go h.run()
	}
	return h
}
